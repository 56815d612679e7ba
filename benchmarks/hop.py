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
the other; the driver is the same code for both.

Printed: sequential p50/p99, hops/s with 64 in flight, the worker's (and the
server's) CPU time per hop, and the swarmbus/raw ratios against the targets of
issue 2 (p50 <= 1.3x raw, throughput >= 70% of raw). With ``--rounds`` > 1
the paths alternate which goes first and the medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Driver,
    Result,
    Worker,
    env_line,
    median_result,
    pct,
    proc_cpu_s,
    quiet_driver_logs,
    report,
    run,
)

from swarmbus.bus import Bus, EmbeddedServer  # noqa: E402

IN, OUT = "bench.ping", "bench.pong"


async def measure(kind: str, url: str, server_pid: int | None, a: argparse.Namespace) -> Result:
    ns = f"b{kind[0]}{uuid.uuid4().hex[:8]}"
    async with await Bus.connect(url, namespace=ns):
        pass  # the namespace's stream, created the same way for both paths
    worker = Worker(kind, url, ns, "hop", IN, OUT, a.concurrency, a.batch, a.uvloop,
                    extra=(["--profile", f"{a.profile}.{kind}"] if a.profile else []))
    worker.start()
    try:
        await asyncio.to_thread(worker.wait_ready)
        d = await Driver.connect(url, ns, IN, OUT, a.size)
        try:
            await d.sequential(a.warmup)
            await d.in_flight(a.warmup * 4, a.inflight)
            c0 = worker.cpu_s()
            seq = await d.sequential(a.seq)
            c1, s1 = worker.cpu_s(), proc_cpu_s(server_pid) if server_pid else float("nan")
            wall, lats = await d.in_flight(a.n, a.inflight)
            c2, s2 = worker.cpu_s(), proc_cpu_s(server_pid) if server_pid else float("nan")
        finally:
            await d.aclose()
    finally:
        await asyncio.to_thread(worker.stop)
    return Result(
        seq_p50_ms=pct(seq, 50) * 1e3, seq_p99_ms=pct(seq, 99) * 1e3, rate=a.n / wall,
        load_p50_ms=pct(lats, 50) * 1e3, load_p99_ms=pct(lats, 99) * 1e3,
        worker_cpu_us_seq=(c1 - c0) / a.seq * 1e6, worker_cpu_us_load=(c2 - c1) / a.n * 1e6,
        server_cpu_us_load=(s2 - s1) / a.n * 1e6,
    )


async def bench(a: argparse.Namespace) -> None:
    server = None if a.nats else EmbeddedServer().start_blocking()
    url = a.nats or server.url  # type: ignore[union-attr]
    pid = server.pid if server else None
    try:
        kinds = a.paths.split(",")
        per: dict[str, list[Result]] = {k: [] for k in kinds}
        for r in range(a.rounds):
            order = kinds if r % 2 == 0 else kinds[::-1]
            for kind in order:
                res = await measure(kind, url, pid, a)
                per[kind].append(res)
                print(f"  round {r + 1} {kind:7}: seq p50 {res.seq_p50_ms:.3f} ms, "
                      f"p99 {res.seq_p99_ms:.3f} ms, {res.rate:,.0f} hops/s", flush=True)
        print()
        print(report({k: median_result(v) for k, v in per.items()}, unit="hops",
                     p50_target=1.3, rate_target=0.70))
    finally:
        if server is not None:
            server.stop_blocking()
            server.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--uvloop", action="store_true", help="uvloop in driver and workers")
    p.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    p.add_argument("--nats", help="use this server instead of an embedded one")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seq", type=int, default=2000, help="sequential hops")
    p.add_argument("-n", type=int, default=20000, help="hops in the in-flight run")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--size", type=int, default=1024, help="payload bytes")
    p.add_argument("--concurrency", type=int, default=100, help="handlers per worker")
    p.add_argument("--batch", type=int, default=100, help="largest pull batch")
    p.add_argument("--paths", default="raw,rawpull,agent",
                   help="comma-separated: raw (nats-py fetch), rawpull, agent")
    p.add_argument("--profile", help="cProfile each worker to PROFILE.raw / PROFILE.agent")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.seq, a.n, a.warmup = 1, 300, 3000, 50
    print(f"hop: {env_line(a.uvloop)}; {a.seq} sequential, {a.n} with {a.inflight} in "
          f"flight, {a.size} B payload, worker concurrency {a.concurrency}, batch {a.batch}, "
          f"{a.rounds} round(s)", flush=True)
    quiet_driver_logs()
    run(lambda: bench(a), use_uvloop=a.uvloop)


if __name__ == "__main__":
    main()
