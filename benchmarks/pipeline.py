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
  100, handled concurrently, plain ack) -- DESIGN.md section 10's raw baseline;
- ``rawpull``: ``_raw.run_rawpull_stage`` (hand-rolled standing pull requests,
  the protocol swarmbus's own pull engine speaks, without its framework);
- ``agent``: each stage a trivial swarmbus ``Agent`` subclass in its own
  ``Swarm`` process (``_worker.stage_agent``): the framework's overhead with a
  zero-cost handler, i.e. what the architect -> coder -> reviewer pipeline
  costs on top of its models, minus its roles' own logic.

Targets (DESIGN.md section 10): >= 85% of the raw pipeline's flows/s, <= 1.2x
its sequential p50.

EXTENSION POINT (issue 4, item 11a): the real architect -> coder -> reviewer
team with zero-latency scripted models. See ``team_workers`` below: give it
the processes to start (one per role) and add ``"team"`` to ``--paths``.
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
    env_line,
    quiet_driver_logs,
    run,
)

from swarmbus.protocols import Message, TaskRequest

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


# -- EXTENSION POINT: the architect -> coder -> reviewer team ---------------------------------
#
# To benchmark the real team (issue 4, item 11a), return one ``Worker``-like
# process per role (architect, coder, reviewer), each running a ``Swarm`` with
# its role agent on a zero-latency scripted model that approves at once (add a
# ``team-<role>`` kind to ``_worker.py``, or any object with the ``Worker``
# methods start / wait_ready / cpu_s / stop). The driver publishes a
# ``TaskRequest`` on ``task`` (``team_message``) and waits for ``result``.


def team_workers(a: argparse.Namespace) -> WorkersFor:
    def make(url: str, ns: str) -> list[Worker]:
        raise NotImplementedError("plug the architect/coder/reviewer processes in here")

    return make


def team_message(seq: int, size: int) -> Message:
    return TaskRequest(goal=f"benchmark task {seq}: " + "x" * max(0, size - 32))


# ---------------------------------------------------------------------------------------------


async def bench(a: argparse.Namespace) -> None:
    paths: dict[str, PathSpec] = {}
    for kind in a.paths.split(","):
        if kind == "team":
            paths[kind] = PathSpec(team_workers(a), "task", "result", team_message)
        else:
            paths[kind] = PathSpec(stage_workers(kind, a), TOPICS[0], TOPICS[-1])
    await bench_paths(paths, a, unit="flows", p50_target=1.2, rate_target=0.85)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--uvloop", action="store_true", help="uvloop in driver and workers")
    p.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    p.add_argument("--nats", help="use this server instead of an embedded one")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seq", type=int, default=1000, help="sequential flows")
    p.add_argument("-n", type=int, default=10000, help="flows in the in-flight run")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--size", type=int, default=1024, help="payload bytes")
    p.add_argument("--concurrency", type=int, default=100, help="handlers per stage process")
    p.add_argument("--batch", type=int, default=100, help="largest pull batch")
    p.add_argument(
        "--paths",
        default="raw,rawpull,agent",
        help="comma-separated: raw (nats-py fetch), rawpull, agent, team",
    )
    p.add_argument("--profile", help="cProfile each stage to PROFILE.<path>.stage<i>")
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
