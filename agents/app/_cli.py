"""The ``swarmbus`` command: up, submit, status, trail, cancel, agents, workflow, schema,
demo, nats, eval. Every mistake a user can make ends in one line, ``error: ...``, exit 2."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import anyio
import structlog
from pydantic import ValidationError

from swarmbus.bus import (
    EmbeddedServer,
    PortTakenError,
    SwarmClient,
    UnknownWorkflowIdError,
    WorkflowStatus,
    apply_event,
)
from swarmbus.protocols import (
    ConfigError,
    ExternalError,
    Limits,
    Problem,
    SwarmbusError,
    TaskRequest,
    TaskResult,
    WorkflowError,
    check_workflow_id,
    registry,
    workflow_json_schema,
)

from .._swarm import Swarm
from ..workflow import check_models, load_workflow, mermaid, show_text
from ._config import SwarmConfig, load_config
from ._eval import add_eval_parser, cmd_eval, interrupted_line
from ._logging import configure_logging
from ._nats import cmd_nats, watch_server
from ._render import progress_line, render_result, render_status, render_trail, trail_json

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
    p.add_argument("--update-consumers", action="store_true",
                   help="rewrite existing role consumers with this config's ack wait and max "
                   "deliveries (default: adopt theirs and warn)")

    p = sub.add_parser("submit", help="submit a task and follow it")
    _client_args(p)
    p.add_argument("goal")
    p.add_argument("--constraint", action="append", default=[], help="repeatable")
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="a named input the workflow declares (repeatable)")
    p.add_argument("--workflow", help="the workflow's name (default: the namespace's default)")
    p.add_argument("--id", help="workflow id (default: random)")
    p.add_argument("--budget", type=float, help="USD across all steps")
    p.add_argument("--max-code-revisions", type=int)
    p.add_argument("--max-design-revisions", type=int)
    p.add_argument("--timeout", type=float, help="deadline in seconds from now")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-wait", action="store_true", help="print the workflow id and exit")

    for name, help_ in (("status", "where a workflow stands"), ("trail", "a workflow's history"),
                        ("cancel", "cancel a workflow")):
        p = sub.add_parser(name, help=help_)
        _client_args(p)
        p.add_argument("workflow_id")
        if name != "cancel":
            p.add_argument("--json", action="store_true")

    p = sub.add_parser("agents", help="list the live agents")
    _client_args(p)
    p.add_argument("--json", action="store_true")

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

    add_eval_parser(sub)
    return ap


def _config(args: argparse.Namespace, **extra: Any) -> SwarmConfig:
    over: dict[str, Any] = dict(extra)
    if getattr(args, "namespace", None):
        over["namespace"] = args.namespace
    if getattr(args, "nats", None):
        over["nats"] = {"servers": args.nats}
    return load_config(getattr(args, "config", None), **over)


async def _client(cfg: SwarmConfig) -> SwarmClient:
    return await SwarmClient.connect(cfg.client_nats(), namespace=cfg.namespace,
                                     stream=cfg.stream)


# -- commands ---------------------------------------------------------------------------------


async def cmd_up(args: argparse.Namespace) -> int:
    from ._team import build_agents, prepare_models

    configure_logging(args.log_format)
    cfg = _config(args, offline=True if args.offline else None, data_dir=args.data_dir or None,
                  workflow=args.workflow, port=args.port)
    agents = build_agents(cfg)
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


async def follow(client: SwarmClient, wf: str, *, quiet: bool = False) -> TaskResult:
    """Print a progress line per step until the result arrives."""
    st = WorkflowStatus(wf, known=False)
    async with contextlib.aclosing(client.events(wf)) as events:
        async for env in events:
            before = st.last_topic
            apply_event(st, env)
            if st.last_topic != before and st.result is None:
                await client.describe(st)
            if not quiet:
                print(progress_line(st, client.bus.namespace), file=sys.stderr, flush=True)
            if st.result is not None:
                return st.result
    raise RuntimeError("event stream ended")  # pragma: no cover


def _inputs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--input {pair!r}: give NAME=VALUE")
        out[name] = value
    return out


async def cmd_submit(args: argparse.Namespace) -> int:
    cfg = _config(args)
    limits = Limits.model_validate({k: v for k, v in {
        "budget_usd": args.budget, "max_code_revisions": args.max_code_revisions,
        "max_design_revisions": args.max_design_revisions, "timeout_s": args.timeout,
    }.items() if v is not None})
    if args.goal and not args.goal.strip():
        raise ConfigError("the goal is only whitespace: say what to build")
    task = TaskRequest(goal=args.goal, constraints=args.constraint, limits=limits,
                       inputs=_inputs(args.input), workflow=args.workflow)
    if args.id is not None:
        check_workflow_id(args.id)  # a mistake is said before connecting
    async with await _client(cfg) as client:
        wf = await client.submit(task, workflow_id=args.id)
        if args.no_wait:
            print(wf)
            return 0
        print(f"submitted {wf}", file=sys.stderr)
        result = await follow(client, wf, quiet=args.json)
    if args.json:
        print(json.dumps({"workflow_id": wf, **result.model_dump(mode="json")}, indent=2))
    else:
        print(render_result(wf, result))
    return 0 if result.status == "approved" else 1


async def cmd_status(args: argparse.Namespace) -> int:
    async with await _client(_config(args)) as client:
        st = await client.status(args.workflow_id)
        namespace = client.bus.namespace
    if args.json:
        print(json.dumps({
            "workflow_id": st.workflow_id, "known": st.known, "step": st.step, "role": st.role,
            "live": st.live, "working": st.working, "stalled": st.stalled or None,
            "round": st.round, "steps": st.steps,
            "spent_usd": st.spent.cost_usd, "spent": st.spent.model_dump(mode="json"),
            "result": st.result.model_dump(mode="json") if st.result else None,
        }, indent=2))
    else:
        print(render_status(st, namespace))
    return 0 if st.known else 1


async def cmd_trail(args: argparse.Namespace) -> int:
    async with await _client(_config(args)) as client:
        trail = await client.trail(args.workflow_id)
        namespace = client.bus.namespace
    if not trail:
        print(f"error: no workflow {args.workflow_id!r} in namespace {namespace!r}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(trail_json(trail), indent=2))
    else:
        print(render_trail(args.workflow_id, trail))
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with await _client(_config(args)) as client:
        try:
            await client.cancel(args.workflow_id)
        except UnknownWorkflowIdError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(f"cancel requested for {args.workflow_id}: it ends before its next model call")
    return 0


async def cmd_agents(args: argparse.Namespace) -> int:
    async with await _client(_config(args)) as client:
        anns = await client.agents()
    if args.json:
        print(json.dumps([a.model_dump(mode="json") for a in anns], indent=2))
        return 0
    if not anns:
        print("no live agents in this namespace")
        return 0
    print(f"{'agent':<12} {'instance':<34} {'model':<28} {'ack wait':>8} {'deliver':>7} "
          f"{'slots':>5} in-flight handled")
    for a in anns:
        ack, deliver = a.settings.get("ack_wait_s", "-"), a.settings.get("max_deliver", "-")
        slots = a.settings.get("concurrency", "-")
        print(f"{a.agent:<12} {a.instance:<34} {a.model or '-':<28} {ack!s:>8} {deliver!s:>7} "
              f"{slots!s:>5} {a.in_flight:>9} {a.handled:>7}"
              + (f"  STALLED: {a.stalled}" if a.stalled else ""))
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
    if args.command not in ("up", "demo", "eval"):  # those set up their own logging
        # Warnings (a bucket as it is, a server taken over) on stderr: stdout is the
        # command's output (--json).
        configure_logging("console", level="WARNING")
    commands = {
        "up": cmd_up, "submit": cmd_submit, "status": cmd_status, "trail": cmd_trail,
        "cancel": cmd_cancel, "agents": cmd_agents, "demo": cmd_demo, "nats": cmd_nats,
        "eval": cmd_eval,
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
        raise


if __name__ == "__main__":
    sys.exit(main())
