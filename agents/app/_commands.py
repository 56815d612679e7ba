"""The client commands: submit, status, trail, cancel, retry, artifact, agents. Each
speaks to a namespace through ``SwarmClient`` only (no agent runtime)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from swarmbus.bus import (
    RunNotRetryableError,
    SwarmClient,
    UnknownWorkflowIdError,
    WorkflowStatus,
    apply_event,
    configure_tracing,
)
from swarmbus.protocols import (
    ConfigError,
    Limits,
    TaskRequest,
    TaskResult,
    Work,
    check_workflow_id,
)

from ._config import SwarmConfig, load_config
from ._render import progress_line, render_result, render_status, render_trail, trail_json

__all__ = ["CLIENT_COMMANDS", "add_client_parsers", "client", "config", "follow"]

DEADLINE_GRACE_S = 10.0
"""How long ``submit`` waits past a run's deadline for its result before it stops
waiting and says why (the supervisor ends a run at its deadline within a second or two
when a daemon runs anywhere in the namespace)."""


def add_client_parsers(sub: Any, client_args: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("submit", help="submit a task and follow it")
    client_args(p)
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
        client_args(p)
        p.add_argument("workflow_id")
        if name != "cancel":
            p.add_argument("--json", action="store_true")
        if name == "trail":
            p.add_argument("--diff", action="store_true",
                           help="show each revision of code as a unified diff")

    p = sub.add_parser("retry", help="resume a run that ended on a transient cause")
    client_args(p)
    p.add_argument("workflow_id")
    p.add_argument("--timeout", type=float,
                   help="seconds from now for the resumed run (default: as long as at first)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-wait", action="store_true", help="resume and exit")

    p = sub.add_parser("artifact", help="print an artifact of a run (JSON)")
    client_args(p)
    p.add_argument("workflow_id")
    p.add_argument("name", help="the artifact's name (as the workflow names it)")

    p = sub.add_parser("agents", help="list the live agents")
    client_args(p)
    p.add_argument("--json", action="store_true")


def config(args: argparse.Namespace, **extra: Any) -> SwarmConfig:
    over: dict[str, Any] = dict(extra)
    if getattr(args, "namespace", None):
        over["namespace"] = args.namespace
    if getattr(args, "nats", None):
        over["nats"] = {"servers": args.nats}
    return load_config(getattr(args, "config", None), **over)


async def client(cfg: SwarmConfig) -> SwarmClient:
    return await SwarmClient.connect(cfg.client_nats(), namespace=cfg.namespace,
                                     stream=cfg.stream)


async def follow(client: SwarmClient, wf: str, *, quiet: bool = False,
                 deadline: datetime | None = None) -> TaskResult | None:
    """Print a progress line per step until the result arrives; None when ``deadline``
    (plus ``DEADLINE_GRACE_S``) passes first: no agent ended the run."""
    st = WorkflowStatus(wf, known=False)
    wait = None if deadline is None else max(
        0.0, (deadline - datetime.now(UTC)).total_seconds()) + DEADLINE_GRACE_S
    with anyio.move_on_after(wait):
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
    return None


def _inputs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--input {pair!r}: give NAME=VALUE")
        out[name] = value
    return out


def _print_result(wf: str, result: TaskResult, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"workflow_id": wf, **result.model_dump(mode="json")}, indent=2))
    else:
        print(render_result(wf, result))
    return 0 if result.status == "approved" else 1


async def _gave_up(client: SwarmClient, wf: str, deadline: datetime) -> int:
    st = await client.status(wf)
    print(f"error: {wf}: its deadline {deadline.isoformat(timespec='seconds')} passed "
          f"{DEADLINE_GRACE_S:.0f} s ago and no agent ended the run (is a daemon running in "
          f"namespace {client.bus.namespace!r}?): {render_status(st, client.bus.namespace)}",
          file=sys.stderr)
    return 1


async def cmd_submit(args: argparse.Namespace) -> int:
    cfg = config(args)
    limits = Limits.model_validate({k: v for k, v in {
        "budget_usd": args.budget, "max_code_revisions": args.max_code_revisions,
        "max_design_revisions": args.max_design_revisions, "timeout_s": args.timeout,
    }.items() if v is not None})
    if args.goal and not args.goal.strip():
        raise ConfigError("the goal is only whitespace: say what to build")
    traced = configure_tracing()  # the OTEL_* variables: the run's trace starts here
    if traced:
        print(traced, file=sys.stderr)
    task = TaskRequest(goal=args.goal, constraints=args.constraint, limits=limits,
                       inputs=_inputs(args.input), workflow=args.workflow,
                       submitted_at=datetime.now(UTC))
    if args.id is not None:
        check_workflow_id(args.id)  # a mistake is said before connecting
    async with await client(cfg) as c:
        wf = await c.submit(task, workflow_id=args.id)
        if args.no_wait:
            print(wf)
            return 0
        print(f"submitted {wf}", file=sys.stderr)
        deadline = await c.deadline(task)
        result = await follow(c, wf, quiet=args.json, deadline=deadline)
        if result is None:
            return await _gave_up(c, wf, deadline)
    return _print_result(wf, result, args.json)


async def cmd_retry(args: argparse.Namespace) -> int:
    async with await client(config(args)) as c:
        try:
            marker = await c.retry(args.workflow_id, timeout_s=args.timeout)
        except (UnknownWorkflowIdError, RunNotRetryableError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"resumed {args.workflow_id} at step {marker.step!r}", file=sys.stderr)
        if args.no_wait:
            return 0
        result = await c.result(args.workflow_id) if args.json else await _follow_resumed(
            c, args.workflow_id)
    return _print_result(args.workflow_id, result, args.json)


async def _follow_resumed(c: SwarmClient, wf: str) -> TaskResult:
    async with anyio.create_task_group() as tg:
        async def progress() -> None:
            while True:
                st = await c.status(wf)
                print(progress_line(st, c.bus.namespace), file=sys.stderr, flush=True)
                await anyio.sleep(2)

        tg.start_soon(progress)
        result = await c.result(wf)
        tg.cancel_scope.cancel()
    return result


async def cmd_status(args: argparse.Namespace) -> int:
    async with await client(config(args)) as c:
        st = await c.status(args.workflow_id)
        namespace = c.bus.namespace
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
    async with await client(config(args)) as c:
        trail = await c.trail(args.workflow_id)
        namespace = c.bus.namespace
    if not trail:
        print(f"error: no workflow {args.workflow_id!r} in namespace {namespace!r}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(trail_json(trail), indent=2))
    else:
        print(render_trail(args.workflow_id, trail, diffs=args.diff))
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with await client(config(args)) as c:
        try:
            ended = await c.cancel(args.workflow_id)
        except UnknownWorkflowIdError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if ended is not None:
        print(f"{args.workflow_id} had ended already ({ended.status}): nothing to cancel")
        return 0
    print(f"cancel requested for {args.workflow_id}: it ends within about a second, with "
          "its best attempt")
    return 0


async def cmd_artifact(args: argparse.Namespace) -> int:
    """The artifact as the run has it now: its result's, else its latest work's."""
    async with await client(config(args)) as c:
        trail = await c.trail(args.workflow_id)
        holder: Any = None
        for stored in reversed(trail):
            env = stored.try_decode()
            if env is not None and isinstance(env.message, TaskResult):
                holder = env.message
                break
            if env is not None and isinstance(env.message, Work):
                holder = env.message.state
                break
        if holder is None:
            print(f"error: no workflow {args.workflow_id!r} with artifacts in namespace "
                  f"{c.bus.namespace!r}", file=sys.stderr)
            return 1
        if args.name not in holder.artifacts:
            names = ", ".join(sorted(holder.artifacts)) or "none yet"
            print(f"error: {args.workflow_id} has no artifact {args.name!r} (it has {names})",
                  file=sys.stderr)
            return 1
        value = await c.artifact(holder, args.name)
    print(json.dumps(value, indent=2, ensure_ascii=False))
    return 0


async def cmd_agents(args: argparse.Namespace) -> int:
    async with await client(config(args)) as c:
        anns = await c.agents()
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


CLIENT_COMMANDS = {
    "submit": cmd_submit, "status": cmd_status, "trail": cmd_trail, "cancel": cmd_cancel,
    "retry": cmd_retry, "artifact": cmd_artifact, "agents": cmd_agents,
}
