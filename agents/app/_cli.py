"""The ``swarmbus`` command: up, submit, status, trail, cancel, retry, artifact, agents,
workflow, schema, demo, nats, eval, route. Every mistake a user can make ends in one line,
``error: ...``, exit 2."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import anyio
import structlog
from pydantic import ValidationError

from swarmbus.bus import (
    Bus,
    EmbeddedServer,
    PortTakenError,
    SwarmClient,
    configure_metrics,
    configure_tracing,
)
from swarmbus.protocols import (
    ConfigError,
    ExternalError,
    Problem,
    SwarmbusError,
    WorkflowError,
    registry,
    workflow_json_schema,
)

from .._swarm import Swarm
from ..workflow import check_models, load_workflow, mermaid, show_text
from ._commands import CLIENT_COMMANDS, add_client_parsers, config
from ._eval import add_eval_parser, cmd_eval, interrupted_line
from ._logging import configure_logging
from ._nats import cmd_nats, watch_server
from ._route import add_route_parser, cmd_route
from ._ui_app import UI_PORT, serve_ui, ui_socket

__all__ = ["main"]


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", help="NATS URL(s), comma-separated (default nats://127.0.0.1:4222)")
    p.add_argument("--namespace", help="swarm namespace (default: default)")
    p.add_argument("-c", "--config", help="swarm.yaml (for NATS settings and namespace)")


def _version() -> str:
    import swarmbus

    return str(swarmbus.__version__)


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line too (argparse prints the usage before it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="swarmbus", description=__doc__)
    ap.add_argument("--version", action="version", version=f"swarmbus {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run a swarm in the foreground")
    _client_args(p)
    p.add_argument("--offline", action="store_true", help="scripted models, no keys")
    p.add_argument("--workflow", help="a workflow file or builtin:<name> (default: swarm.yaml's)")
    p.add_argument("--data-dir", help="embedded NATS data directory (default .swarmbus)")
    p.add_argument("--port", type=int, help="embedded NATS port (default 4222)")
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    p.add_argument("--make-default", action="store_true",
                   help="make this workflow the namespace's default (what a task that names "
                   "none follows); by default only a namespace with none takes it")
    p.add_argument("--update-consumers", action="store_true",
                   help="rewrite existing role consumers with this config's ack wait and max "
                   "deliveries (default: adopt theirs and warn)")

    add_client_parsers(sub, _client_args)

    p = sub.add_parser("workflow", help="check or show a workflow file")
    wsub = p.add_subparsers(dest="action", required=True)
    w = wsub.add_parser("check", help="load and check a workflow (exit 0 when it checks; "
                           "warnings, such as an unpriced model, do not fail it)")
    w.add_argument("file", help="a workflow file or builtin:<name>")
    w = wsub.add_parser("show", help="print a workflow's steps and edges")
    w.add_argument("file", help="a workflow file or builtin:<name>")
    w.add_argument("--mermaid", action="store_true", help="as a Mermaid flowchart")

    p = sub.add_parser("schema", help="write the JSON Schema of every message type")
    p.add_argument("-o", "--out", help="directory (default: print one JSON document)")

    p = sub.add_parser("demo", help="offline demo: embedded NATS, scripted models, two tasks")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("nats", help="run the embedded nats-server alone (local development)")
    p.add_argument("--port", type=int, default=4222)
    p.add_argument("--data-dir", default=".swarmbus/nats")

    p = sub.add_parser("ui", help="a local read-only page of the namespace's runs, live "
                       "(needs the ui extra)")
    _client_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=UI_PORT, help=f"default {UI_PORT}; 0: any free")
    p.add_argument("--trace-url", default="", metavar="URL",
                   help="link each run's trace id to a tracing backend: a URL with "
                   "{trace_id}, e.g. http://localhost:16686/trace/{trace_id} (Jaeger)")

    add_eval_parser(sub)
    add_route_parser(sub, _client_args)
    return ap


# -- commands ---------------------------------------------------------------------------------


async def cmd_up(args: argparse.Namespace) -> int:
    from ._team import build_agents, prepare_models

    configure_logging(args.log_format)
    cfg = config(args, offline=True if args.offline else None, data_dir=args.data_dir or None,
                  workflow=args.workflow, port=args.port)
    for said in (configure_tracing(), configure_metrics()):  # when OTEL_* variables ask
        if said:
            print(said, file=sys.stderr)
    agents = build_agents(cfg, make_default=True if args.make_default else None)
    server: EmbeddedServer | None = None
    died: list[str] = []
    if cfg.embedded and "servers" not in cfg.nats.model_fields_set:
        # An orphaned server of this data directory (its daemon was killed) is taken over.
        server = EmbeddedServer(port=cfg.port, data_dir=cfg.data_dir / "nats")
        try:
            await server.start()
        except PortTakenError:
            raise ConfigError(
                f"127.0.0.1:{cfg.port} is taken (another NATS or swarmbus up?): pass "
                f"--nats nats://127.0.0.1:{cfg.port} to join that server, or --port for another"
            ) from None
        print(f"embedded nats-server on {server.url} (data in {server.data_dir})",
              file=sys.stderr)
    try:
        swarm = Swarm(agents, nats=server.url if server else cfg.nats, namespace=cfg.namespace,
                      stream=cfg.stream, grace_s=cfg.grace_s,
                      update_consumers=args.update_consumers)
        async with anyio.create_task_group() as watch:
            if server is not None:  # if it dies, the swarm stops and we exit 2
                watch.start_soon(watch_server, server, watch.cancel_scope, died)
            async with anyio.create_task_group() as tg:
                await tg.start(swarm.serve)
                loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
                structlog.get_logger("swarmbus.app").info(
                    "swarmbus up", version=_version(),
                    loop="uvloop" if loop == "uvloop" else "asyncio", namespace=cfg.namespace)
                tg.start_soon(prepare_models, agents)  # SDK imports: after ready, off the path
            watch.cancel_scope.cancel()  # the swarm has stopped (a signal)
    finally:
        if server is not None:
            await server.stop()
    if died:
        raise ExternalError(died[0])
    return 0


async def cmd_ui(args: argparse.Namespace) -> int:
    if args.trace_url and "{trace_id}" not in args.trace_url:
        raise ConfigError(f"--trace-url {args.trace_url!r} has no {{trace_id}} to fill in")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port (0-65535; 0: any free one)")
    try:
        sock = ui_socket(args.host, args.port)
    except socket.gaierror as e:
        raise ConfigError(f"--host {args.host!r} is not an address of this machine "
                          f"({e.strerror}): pass 127.0.0.1 (default), ::1 or 0.0.0.0") from None
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}): "
                          "pass --port for another (0: any free one)") from None
    with sock:  # closed however it ends (NATS unreachable, a signal)
        cfg = config(args)
        # Read-only: connected without setting up streams (a namespace is never made).
        bus = await Bus.connect(cfg.client_nats(), namespace=cfg.namespace, stream=cfg.stream,
                                setup=False)
        async with SwarmClient(bus) as c, anyio.create_task_group() as tg:
            url = await tg.start(lambda task_status: serve_ui(
                c, sock, trace_url=args.trace_url, task_status=task_status))
            print(f"swarmbus ui: {url} (namespace {cfg.namespace}; Ctrl-C to stop)",
                  file=sys.stderr, flush=True)
    return 0


def cmd_workflow(args: argparse.Namespace) -> int:
    if args.action == "show":
        wf = load_workflow(args.file)
        print(mermaid(wf) if args.mermaid else show_text(wf))
        return 0
    # check: the models resolved as `up` builds them; warnings go with the errors, or
    # after the OK line, and only errors fail.
    try:
        wf = load_workflow(args.file)
    except WorkflowError as e:
        try:
            found = check_models(args.file)
        except WorkflowError:  # it does not read or parse: that is the whole error
            raise e from None
        _print_warnings(args.file, found.warnings)
        raise WorkflowError(e.source, [*e.problems, *found.errors]) from None
    found = check_models(wf)
    if found.errors:
        _print_warnings(args.file, found.warnings)
        raise WorkflowError(args.file, found.errors)
    roles = ", ".join(f"{r} ({len(s)} step{'s' * (len(s) > 1)})" for r, s in wf.roles.items())
    print(f"{args.file}: workflow {wf.name} checks ({len(wf.spec.steps)} steps; roles "
          f"{roles}; hash {wf.hash})", flush=True)
    _print_warnings(args.file, found.warnings)
    return 0


def _print_warnings(source: str, warnings: list[Problem]) -> None:
    for w in warnings:
        print(f"warning: {source}: {w}", file=sys.stderr)


def cmd_schema(args: argparse.Namespace) -> int:
    schemas = registry.json_schemas()
    schemas["swarmbus.workflow/v1"] = workflow_json_schema()
    if not args.out:
        print(json.dumps(schemas, indent=2))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        (out / (name.replace("/", ".v") + ".json")).write_text(json.dumps(schema, indent=2))
    print(f"wrote {len(schemas)} schemas to {out}")
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    configure_logging("console", level="WARNING")
    return await run_demo(json_out=args.json)


def _one_line(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False)[:3]:
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def _leaf(e: BaseException) -> BaseException:
    """The exception a task group raised on behalf of (its first), or ``e`` itself."""
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def _run(args: argparse.Namespace) -> int:
    if args.command == "schema":
        return cmd_schema(args)
    if args.command == "workflow":
        return cmd_workflow(args)
    if args.command not in ("up", "demo", "eval", "route"):  # those set up their own logging
        # Warnings (a bucket as it is, a server taken over) on stderr: stdout is the
        # command's output (--json).
        configure_logging("console", level="WARNING")
    commands = {
        "up": cmd_up, "demo": cmd_demo, "nats": cmd_nats, "eval": cmd_eval, "route": cmd_route,
        "ui": cmd_ui,
        **CLIENT_COMMANDS,
    }
    # uvloop when installed (the `fast` extra): named in `swarmbus up`'s first log line.
    options = {"use_uvloop": True} if importlib.util.find_spec("uvloop") is not None else {}
    return anyio.run(commands[args.command], args, backend_options=options)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``swarmbus`` command; returns the exit code (0 ok, 1 not approved or
    unknown workflow, 2 a mistake or NATS unreachable, 130 interrupted). A mistake is
    one line on stderr, ``error: ...``, never a traceback."""
    args = _parser().parse_args(argv)
    started = datetime.now(UTC)
    try:
        return _run(args)
    except BaseException as raised:
        e = _leaf(raised)
        if isinstance(e, KeyboardInterrupt):
            if args.command == "eval" and args.action == "run":
                print(interrupted_line(args.out, started), file=sys.stderr)
            return 130
        if isinstance(e, ValidationError):
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 2
        if isinstance(e, SwarmbusError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, BrokenPipeError):  # `swarmbus trail ID | head`: the reader left
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        raise


if __name__ == "__main__":
    sys.exit(main())
