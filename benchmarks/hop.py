"""One typed hop through a swarmbus ``Agent`` against raw nats-py, same server, same run.

    python benchmarks/hop.py [--uvloop] [--quick] [--rounds N] [--nats URL]

A *hop*, measured the same way on both paths: the driver publishes a 1 KB
``bench.Work`` message through JetStream (awaiting the stream's ack, with a
``Nats-Msg-Id``); a worker process pulls it from a durable pull consumer,
decodes it, publishes its output through JetStream (awaiting the ack, with a
``Nats-Msg-Id`` derived from the input's), and acks the input. The hop's
latency is from the driver starting the publish to the driver seeing the
output (a core-NATS subscription on the output subject). The worker is a
swarmbus ``Agent`` in a ``Swarm`` on one path and ``_raw.run_raw_stage`` on
the other (``--paths``: ``raw`` = nats-py ``fetch``, the raw baseline;
``rawpull`` = hand-rolled standing pull requests, the protocol swarmbus's own
pull engine speaks, without its framework; see ``_raw.py``); the driver is the
same code for every path.

Printed: sequential p50/p99, hops/s with 64 in flight, the worker's (and the
server's) CPU time per hop, and the swarmbus/raw ratios against the targets of
issue 2 (p50 <= 1.3x raw, throughput >= 70% of raw). With ``--rounds`` > 1
the paths alternate which goes first and the medians are reported.
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

IN, OUT = "bench.ping", "bench.pong"


def workers_for(kind: str, a: argparse.Namespace) -> WorkersFor:
    def make(url: str, ns: str) -> list[Worker]:
        prof = ["--profile", f"{a.profile}.{kind}"] if a.profile else []
        return [Worker(kind, url, ns, "hop", IN, OUT, a.concurrency, a.batch, a.uvloop, extra=prof)]

    return make


async def bench(a: argparse.Namespace) -> None:
    paths = {k: PathSpec(workers_for(k, a), IN, OUT) for k in a.paths.split(",")}
    await bench_paths(paths, a, unit="hops", p50_target=1.3, rate_target=0.70)


def main() -> None:
    p = common_args(__doc__, unit="hops", seq=2000, n=20000, warmup=200)
    p.add_argument(
        "--paths",
        default="raw,rawpull,agent",
        help="comma-separated: raw (nats-py fetch), rawpull, agent",
    )
    p.add_argument("--profile", help="cProfile each worker to PROFILE.raw / PROFILE.agent")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.seq, a.n, a.warmup = 1, 300, 3000, 50
    print(
        f"hop: {env_line(a.uvloop)}; {a.seq} sequential, {a.n} with {a.inflight} in "
        f"flight, {a.size} B payload, worker concurrency {a.concurrency}, batch {a.batch}, "
        f"{a.rounds} round(s)",
        flush=True,
    )
    quiet_driver_logs()
    run(lambda: bench(a), use_uvloop=a.uvloop)


if __name__ == "__main__":
    main()
