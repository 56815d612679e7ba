"""1,000 workflows at once against one swarmbus daemon: wall time against the bound, peak memory.

    python benchmarks/load.py [-n 1000] [--latency 0.1] [--concurrency 8,100] [--processes 1]
                              [--sandbox] [--uvloop] [--nats URL]

Issue 4, item 11b. For each agent concurrency C (``--concurrency``, a list):

- a fresh namespace and a fresh daemon: the built-in workflow's step agents
  (architect, coder, reviewer; ``_team.py``) in one ``Swarm`` process
  (``--processes 3``: a process per role, as three ``swarmbus up`` would), on
  offline ``FunctionModel``s that answer with
  fixed small replies after ``--latency`` seconds (100 ms), response cache off
  (every workflow makes 3 model calls), each role's consumer with concurrency
  C, logging like ``swarmbus up`` (JSON lines at INFO);
- the reviewer's sandbox is **skipped** by default (``_team.passing``, a test runner
  benchmark-only: a fixed passing ``TestReport``), so the bound below holds;
  ``--sandbox`` runs the real sandbox (a pytest subprocess per review);
- the client submits ``-n`` workflows at once (``SwarmClient.submit``, all
  publishes concurrently) and waits until every one has a result (a core-NATS
  subscription on ``result``); it checks that every workflow was approved.

**The bound.** Every workflow makes one call per role and the roles form a
pipeline, each role with C handlers and calls of L seconds; so each role needs
at least ceil(N/C) * L seconds, and the last wave reaches the reviewer only
after passing the two roles before it: bound = ceil(N/C) * L + 2 * L. The
ratio wall/bound is what the framework (bus, roles, codec, one Python process
on this machine's CPUs) adds; when C is large the bound gets small and the
daemon's CPU becomes the limit instead.

**Memory.** The daemon's peak resident set (``VmHWM`` from ``/proc/<pid>/status``;
with ``--processes 3``, the largest and the sum), and its resident set when
ready, before the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Worker, env_line, fmt_table, pct, proc_cpu_s, quiet_driver_logs, run
from nats.aio.msg import Msg

from swarmbus.bus import SwarmClient
from swarmbus.protocols import TaskRequest

ROLES = ("architect", "coder", "reviewer")


def vm_kb(pid: int, field: str) -> int:
    """``VmHWM`` / ``VmRSS`` of a process in KiB (Linux /proc), 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class LoadResult:
    concurrency: int
    n: int
    bound_s: float
    submit_s: float
    first_s: float
    wall_s: float
    p50_s: float
    p99_s: float
    statuses: dict[str, int]
    rss_ready_mb: float
    hwm_mb: float
    hwm_sum_mb: float
    cpu_s: float
    server_cpu_s: float


async def one(url: str, server_pid: int | None, c: int, a: argparse.Namespace) -> LoadResult:
    ns = f"l{uuid.uuid4().hex[:10]}"
    groups = [",".join(ROLES)] if a.processes == 1 else list(ROLES)
    extra = ["--latency", str(a.latency), "--ack-wait", str(a.ack_wait), "--log-level", a.log_level]
    if a.sandbox:
        extra.append("--sandbox")
    client = await SwarmClient.connect(url, namespace=ns)  # creates the stream
    workers = [
        Worker(
            "team",
            url,
            ns,
            g.replace(",", "+"),
            "task",
            "result",
            c,
            min(c, 100),
            a.uvloop,
            extra=["--roles", g, *extra],
        )
        for g in groups
    ]
    try:
        for w in workers:
            w.start()
        for w in workers:
            await asyncio.to_thread(w.wait_ready)
        await asyncio.sleep(0.5)  # let start-up settle before reading the baseline
        rss_ready = sum(vm_kb(w.proc.pid, "VmRSS") for w in workers if w.proc)
        cpu0 = sum(w.cpu_s() for w in workers)
        srv0 = proc_cpu_s(server_pid) if server_pid else float("nan")

        done: dict[str, tuple[float, str]] = {}
        all_done = asyncio.Event()
        wfs = [f"w{i}" for i in range(a.n)]

        async def on_result(msg: Msg) -> None:
            wf = msg.subject.split(".")[2]
            if wf not in done:
                done[wf] = (time.perf_counter(), json.loads(msg.data).get("status", "?"))
                if len(done) == a.n:
                    all_done.set()

        nc = client.bus.nc
        sub = await nc.subscribe(
            f"swarm.{ns}.*.result", cb=on_result, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        await nc.flush()
        c_bound = math.ceil(a.n / c) * a.latency + (len(ROLES) - 1) * a.latency

        t0 = time.perf_counter()
        await asyncio.gather(
            *(client.submit(TaskRequest(goal=f"load task {wf}"), workflow_id=wf) for wf in wfs)
        )
        t_sub = time.perf_counter()
        try:
            await asyncio.wait_for(all_done.wait(), a.timeout)
        except TimeoutError:
            raise RuntimeError(f"C={c}: {len(done)} of {a.n} results after {a.timeout} s") from None
        t_end = max(t for t, _ in done.values())
        await sub.unsubscribe()

        hwms = [vm_kb(w.proc.pid, "VmHWM") for w in workers if w.proc]
        cpu1 = sum(w.cpu_s() for w in workers)
        srv1 = proc_cpu_s(server_pid) if server_pid else float("nan")
    finally:
        await client.aclose()
        for w in workers:
            await asyncio.to_thread(w.stop)

    lats = [t - t0 for t, _ in done.values()]
    statuses: dict[str, int] = {}
    for _, st in done.values():
        statuses[st] = statuses.get(st, 0) + 1
    return LoadResult(
        concurrency=c,
        n=a.n,
        bound_s=c_bound,
        submit_s=t_sub - t0,
        first_s=min(lats),
        wall_s=t_end - t0,
        p50_s=pct(lats, 50),
        p99_s=pct(lats, 99),
        statuses=statuses,
        rss_ready_mb=rss_ready / 1024,
        hwm_mb=max(hwms) / 1024,
        hwm_sum_mb=sum(hwms) / 1024,
        cpu_s=cpu1 - cpu0,
        server_cpu_s=srv1 - srv0,
    )


async def bench(a: argparse.Namespace) -> None:
    from swarmbus.bus import EmbeddedServer

    server = None if a.nats else EmbeddedServer().start_blocking()
    url = a.nats or server.url  # type: ignore[union-attr]
    pid = server.pid if server else None
    results = []
    try:
        for c in [int(x) for x in a.concurrency.split(",")]:
            r = await one(url, pid, c, a)
            results.append(r)
            print(
                f"  C={c}: {r.n} workflows in {r.wall_s:.2f} s (bound {r.bound_s:.2f} s, "
                f"{r.wall_s / r.bound_s:.2f}x); statuses {r.statuses}; daemon peak "
                f"{r.hwm_mb:.0f} MB",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop_blocking()
            server.cleanup()
    print()
    print(report(results, a))


def report(results: list[LoadResult], a: argparse.Namespace) -> str:
    mem = "daemon" if a.processes == 1 else "largest of 3 / sum"
    rows = [["", *(f"C={r.concurrency}" for r in results)]]

    def row(label: str, f: object) -> None:
        rows.append([label, *(f(r) for r in results)])  # type: ignore[operator]

    row("workflows", lambda r: f"{r.n:,}")
    row("all submitted after (s)", lambda r: f"{r.submit_s:.2f}")
    row("first result after (s)", lambda r: f"{r.first_s:.2f}")
    row("bound: ceil(N/C)*L + 2L (s)", lambda r: f"{r.bound_s:.2f}")
    row("wall, last result (s)", lambda r: f"{r.wall_s:.2f}")
    row("wall / bound", lambda r: f"{r.wall_s / r.bound_s:.2f}x")
    row("workflows/s", lambda r: f"{r.n / r.wall_s:,.0f}")
    row("latency p50 / p99 (s)", lambda r: f"{r.p50_s:.2f} / {r.p99_s:.2f}")
    row("approved", lambda r: f"{r.statuses.get('approved', 0):,}")
    cpu = ("daemon CPU" if a.processes == 1 else "role processes' CPU") + (
        " incl. sandbox children" if a.sandbox else ""
    )
    row(f"{cpu} (s)", lambda r: f"{r.cpu_s:.1f}")
    row(f"{cpu} per workflow (ms)", lambda r: f"{r.cpu_s / r.n * 1e3:.2f}")
    row("nats-server CPU (s)", lambda r: f"{r.server_cpu_s:.1f}")
    row(
        "RSS when ready (MB)" if a.processes == 1 else "RSS when ready, sum (MB)",
        lambda r: f"{r.rss_ready_mb:.0f}",
    )
    if a.processes == 1:
        row("peak RSS, VmHWM (MB)", lambda r: f"{r.hwm_mb:.0f}")
    else:
        row(f"peak RSS, VmHWM, {mem} (MB)", lambda r: f"{r.hwm_mb:.0f} / {r.hwm_sum_mb:.0f}")
    notes = [
        "",
        f"L = {a.latency * 1e3:.0f} ms per model call, 3 calls per workflow (one per role), "
        "cache off; C = handlers per role.",
        "sandbox: "
        + (
            "REAL (a pytest subprocess per review; the bound ignores it)"
            if a.sandbox
            else "skipped (benchmark-only test runner: fixed passing TestReport)"
        ),
    ]
    bad = [r for r in results if r.statuses.get("approved", 0) != r.n]
    if bad:
        notes.append(f"NOT ALL APPROVED: {[(r.concurrency, r.statuses) for r in bad]}")
    return fmt_table(rows) + "\n".join(notes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=1000, help="workflows submitted at once")
    p.add_argument("--latency", type=float, default=0.1, help="model latency, seconds")
    p.add_argument(
        "--concurrency",
        default="8,100",
        help="comma-separated handlers per role, one run each (8 is `swarmbus up`'s default)",
    )
    p.add_argument(
        "--processes",
        type=int,
        choices=[1, 3],
        default=1,
        help="1: the three roles in one daemon process; 3: a process per role",
    )
    p.add_argument("--sandbox", action="store_true", help="run the real sandbox per review")
    p.add_argument("--uvloop", action="store_true", help="uvloop in client and daemon")
    p.add_argument("--nats", help="use this server instead of an embedded one")
    p.add_argument("--log-level", default="INFO", help="the daemon's log level (INFO as `up`)")
    p.add_argument("--ack-wait", type=float, default=60.0, help="consumer ack wait, seconds")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after, seconds")
    a = p.parse_args()
    procs = "one daemon process" if a.processes == 1 else "a process per role"
    print(
        f"load: {env_line(a.uvloop)}; {a.n} workflows at once, model latency "
        f"{a.latency * 1e3:.0f} ms, {procs}, "
        f"sandbox {'on' if a.sandbox else 'skipped'}, concurrency per role {a.concurrency}",
        flush=True,
    )
    quiet_driver_logs()
    run(lambda: bench(a), use_uvloop=a.uvloop)


if __name__ == "__main__":
    main()
