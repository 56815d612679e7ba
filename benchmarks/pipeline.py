"""A durable 3-stage pipeline, a process per stage: raw nats-py against swarmbus Agents.

    python benchmarks/pipeline.py [--uvloop] [--quick] [--rounds N] [--nats URL]

A *flow*: the driver publishes a 1 KB ``bench.Work`` on ``bench.task``
(JetStream, awaiting the ack, with a ``Nats-Msg-Id``); stage1 takes it and
publishes on ``bench.s1``, stage2 on ``bench.s2``, stage3 on ``bench.result``;
each stage is its own process with its own durable pull consumer and does what
one hop of ``hop.py`` does (decode, publish the output through JetStream
awaiting the ack with a derived ``Nats-Msg-Id``, ack). The flow's latency is
from the driver starting the publish to the driver seeing the result.

Paths (``--paths``, all in the same run on the same server):

- ``raw``: each stage is ``_raw.run_raw_stage`` (nats-py ``fetch`` of up to
  100, handled concurrently, plain ack) -- the raw baseline;
- ``rawpull``: ``_raw.run_rawpull_stage`` (hand-rolled standing pull requests,
  the protocol swarmbus's own pull engine speaks, without its framework);
- ``agent``: each stage a trivial swarmbus ``Agent`` subclass in its own
  ``Swarm`` process (``_worker.stage_agent``): the framework's overhead with a
  zero-cost handler, i.e. what the architect -> coder -> reviewer pipeline
  costs on top of its models, minus its roles' own logic.

- ``team``: the built-in workflow (``builtin:code-review``: architect -> coder ->
  reviewer) on the generic step runtime (``StepAgent``), a process per role
  (``_team.py``), on zero-latency scripted models (fixed small replies),
  response cache off (every workflow makes 3 model calls), logging like
  ``swarmbus up`` (JSON lines at INFO). The driver publishes a ``TaskRequest``
  (goal of ``--size`` bytes) on ``task`` and waits for ``result``. The
  ``sandbox.pytest`` tool is given a test runner that reports a pass without
  running anything (injected through ``team(tools=...)``, benchmark-only), so
  this is the framework's cost for the real workflow;
- ``team-sandbox``: the same with the real sandbox (the coder's tests run in a
  pytest subprocess per review): the end-to-end cost, which the sandbox
  dominates. No targets apply. Run it separately with small counts (see
  ``benchmarks/README.md``).

Targets: for the trivial-agent pipeline (``agent`` against ``raw``) >= 0.85x of
raw's flows/s and <= 1.2x its sequential p50; for ``team`` (issue 12: the generic
step runtime) >= 0.6x and <= 1.3x.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PathSpec,
    Worker,
    WorkersFor,
    bench_paths,
    common_args,
    env_line,
    quiet_driver_logs,
    run,
)

from swarmbus.protocols import Message, Meta, TaskRequest

TOPICS = ["bench.task", "bench.s1", "bench.s2", "bench.result"]


def stage_workers(kind: str, a: argparse.Namespace) -> WorkersFor:
    """Three processes of ``kind`` (raw | rawpull | agent), stage i: TOPICS[i-1] -> TOPICS[i]."""

    def make(url: str, ns: str) -> list[Worker]:
        out = []
        for i in range(1, len(TOPICS)):
            prof = ["--profile", f"{a.profile}.{kind}.stage{i}"] if a.profile else []
            out.append(
                Worker(
                    kind,
                    url,
                    ns,
                    f"stage{i}",
                    TOPICS[i - 1],
                    TOPICS[i],
                    a.concurrency,
                    a.batch,
                    a.uvloop,
                    extra=prof,
                )
            )
        return out

    return make


# -- the workflow team: builtin:code-review on the step runtime (issue 12) -----------------------

TEAM = {
    "architect": ("task", "step.implement"),
    "coder": ("step.implement", "step.review"),
    "reviewer": ("step.review", "result"),
}
"""Each role's process, with the topic it takes and the one it publishes (approve: result)."""


def team_workers(a: argparse.Namespace, *, sandbox: bool = False) -> WorkersFor:
    """One ``_worker.py team --roles <role>`` process per role (``_team.run_team``)."""
    kind = "team-sandbox" if sandbox else "team"

    def make(url: str, ns: str) -> list[Worker]:
        out = []
        for role, (in_topic, out_topic) in TEAM.items():
            extra = ["--roles", role, "--log-level", a.team_log_level]
            if sandbox:
                extra.append("--sandbox")
            if a.profile:
                extra += ["--profile", f"{a.profile}.{kind}.{role}"]
            out.append(
                Worker(
                    "team",
                    url,
                    ns,
                    role,
                    in_topic,
                    out_topic,
                    a.concurrency,
                    a.batch,
                    a.uvloop,
                    extra=extra,
                )
            )
        return out

    return make


def team_message(seq: int, size: int) -> Message:
    return TaskRequest(goal=f"benchmark task {seq}: " + "x" * max(0, size - 32))


async def team_sizes(url: str, ns: str, wf: str) -> str:
    """What one team workflow put on the wire (read back from the stream) and what
    the codec costs per message."""
    import time

    from _common import fmt_table, work

    from swarmbus.bus import Bus, decode, encode

    def per_call_us(fn: object, n: int = 300) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        return (time.perf_counter() - t0) / n * 1e6

    rows = [["topic", "body B", "headers B", "decode us", "encode us"]]
    async with await Bus.connect(url, namespace=ns) as bus:
        history = await bus.history(wf)
        for m in history:
            topic = m.subject.split(".", 3)[3]
            env = decode(m.subject, m.data, m.headers)
            hdr_bytes = sum(len(k) + len(v) + 4 for k, v in m.headers.items())
            dec = per_call_us(lambda m=m: decode(m.subject, m.data, m.headers))
            enc = per_call_us(lambda env=env: encode(env.message, Meta("x" * 32, round=1)))
            rows.append([topic, f"{len(m.data):,}", str(hdr_bytes), f"{dec:.0f}", f"{enc:.0f}"])
    total = sum(len(m.data) for m in history)
    return (
        f"  team workflow {wf}: {len(history)} messages, {total:,} body bytes in all "
        f"(a raw-path flow: 4 bodies of {len(work(0, 1024).model_dump_json()):,} B at "
        f"--size 1024)\n"
        + "\n".join("    " + ln for ln in fmt_table(rows).splitlines())
    )


# ---------------------------------------------------------------------------------------------


async def bench(a: argparse.Namespace) -> None:
    paths: dict[str, PathSpec] = {}
    for kind in a.paths.split(","):
        if kind in ("team", "team-sandbox"):
            sandbox = kind == "team-sandbox"
            paths[kind] = PathSpec(
                team_workers(a, sandbox=sandbox),
                "task",
                "result",
                team_message,
                after=team_sizes,
                # Issue 12's targets for the generic step runtime; none with the sandbox.
                targets=False if sandbox else (1.3, 0.6),
            )
        else:
            paths[kind] = PathSpec(stage_workers(kind, a), TOPICS[0], TOPICS[-1])
    await bench_paths(paths, a, unit="flows", p50_target=1.2, rate_target=0.85)


def main() -> None:
    p = common_args(__doc__, unit="flows", seq=1000, n=10000, warmup=100)
    p.add_argument(
        "--paths",
        default="raw,rawpull,agent",
        help="comma-separated: raw (nats-py fetch), rawpull, agent (trivial Agents), team "
        "(real roles, sandbox skipped), team-sandbox (real roles and sandbox)",
    )
    p.add_argument(
        "--team-log-level",
        default="INFO",
        help="log level of the team's role processes (INFO, as `swarmbus up`)",
    )
    p.add_argument(
        "--profile", help="cProfile each stage to PROFILE.<path>.stage<i> (team: .<role>)"
    )
    a = p.parse_args()
    if a.quick:
        a.rounds, a.seq, a.n, a.warmup = 1, 200, 2000, 30
    print(
        f"pipeline: {env_line(a.uvloop)}; 3 stages, a process each; {a.seq} sequential, "
        f"{a.n} with {a.inflight} in flight, {a.size} B payload, concurrency "
        f"{a.concurrency}, batch {a.batch}, {a.rounds} round(s)",
        flush=True,
    )
    quiet_driver_logs()
    run(lambda: bench(a), use_uvloop=a.uvloop)


if __name__ == "__main__":
    main()
