"""Shared by the benchmarks: the benchmark message, the driver, worker processes, stats.

The driver is the same for the raw and the swarmbus path: it publishes the
input through JetStream with plain nats-py (awaiting the stream's ack, with a
``Nats-Msg-Id`` and a ``Swarm-Type`` header, as a peer in any language would)
and sees the last stage's output on a core-NATS subscription of its subject.
Only what runs in the worker processes differs between the two paths.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from swarmbus.protocols import Message, message_type

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


@message_type("bench.Work")
class Work(Message):
    """The benchmark message: a sequence number, an opaque payload, a hop count."""

    seq: int
    payload: str = ""
    hops: int = 0


def work(seq: int, size: int) -> Message:
    return Work(seq=seq, payload="x" * size)


# -- worker processes ----------------------------------------------------------------------


@dataclass
class Worker:
    """One stage in its own process (``_worker.py``), raw nats-py or a swarmbus Agent."""

    kind: str  # "raw" | "agent"
    url: str
    namespace: str
    name: str
    in_topic: str
    out_topic: str
    concurrency: int
    batch: int
    uvloop: bool
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    extra: list[str] = field(default_factory=list)

    def start(self) -> Worker:
        fd, path = tempfile.mkstemp(prefix=f"bench-{self.kind}-{self.name}-", suffix=".log")
        self.log = Path(path)
        args = [
            sys.executable,
            str(HERE / "_worker.py"),
            self.kind,
            "--url",
            self.url,
            "--namespace",
            self.namespace,
            "--name",
            self.name,
            "--in-topic",
            self.in_topic,
            "--out-topic",
            self.out_topic,
            "--concurrency",
            str(self.concurrency),
            "--batch",
            str(self.batch),
            *(["--uvloop"] if self.uvloop else []),
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            args, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        os.close(fd)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None and self.log is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "BENCH-READY" in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"worker {self.kind}/{self.name} not ready:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log else ""

    def cpu_s(self) -> float:
        assert self.proc is not None
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            print(
                f"  [{self.kind}/{self.name} did not stop on SIGTERM in 20 s: killed]\n"
                + self.tail()[-1500:],
                file=sys.stderr,
            )
            self.proc.kill()
            self.proc.wait()
        if self.log is not None:
            text = self.log.read_text(errors="replace")
            bad = [ln for ln in text.splitlines() if _bad_log_line(ln)]
            if bad:
                print(
                    f"  [{self.kind}/{self.name} log has errors]\n" + "\n".join(bad[:10]),
                    file=sys.stderr,
                )
            self.log.unlink(missing_ok=True)


def _bad_log_line(line: str) -> bool:
    """A traceback, a JSON log line at level error/critical, or another line saying error
    (JSON lines are judged by their level only: ``"errors": 0`` is not an error)."""
    if "Traceback" in line:
        return True
    if line.startswith("{"):
        try:
            level = json.loads(line).get("level", "")
        except ValueError:
            return "error" in line.lower()
        return level in ("error", "critical", "exception")
    return "error" in line.lower()


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and of its reaped children (e.g. the
    sandbox's pytest processes), from Linux /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


# -- the driver ----------------------------------------------------------------------------


class Driver:
    """Publishes inputs on ``in_topic`` and waits for each flow's output on ``out_topic``."""

    def __init__(
        self,
        nc: NATS,
        namespace: str,
        in_topic: str,
        out_topic: str,
        size: int,
        message: Callable[[int, int], Message] = work,
    ):
        self.nc = nc
        self.message = message
        self.js = nc.jetstream(timeout=30.0)
        self.ns = namespace
        self.in_topic = in_topic
        self.out_topic = out_topic
        self.size = size
        self._pending: dict[str, asyncio.Future[float]] = {}
        self._run = 0
        self.last_wf = ""
        """The workflow id of the last flow that completed."""

    @classmethod
    async def connect(
        cls,
        url: str,
        namespace: str,
        in_topic: str,
        out_topic: str,
        size: int,
        message: Callable[[int, int], Message] = work,
    ) -> Driver:
        nc = await nats.connect(url, name="bench-driver", max_reconnect_attempts=0)
        d = cls(nc, namespace, in_topic, out_topic, size, message)
        await nc.subscribe(
            f"swarm.{namespace}.*.{out_topic}",
            cb=d._on_out,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        await nc.flush()
        return d

    async def _on_out(self, msg: Msg) -> None:
        now = time.perf_counter()
        fut = self._pending.pop(msg.subject.split(".")[2], None)
        if fut is not None and not fut.done():
            fut.set_result(now)

    async def flow(self, wf: str, seq: int) -> float:
        """One flow's latency in seconds: publish (acked) -> output seen."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pending[wf] = fut
        msg = self.message(seq, self.size)
        t0 = time.perf_counter()
        await self.js.publish(
            f"swarm.{self.ns}.{wf}.{self.in_topic}",
            msg.model_dump_json().encode(),
            # As SwarmClient.submit publishes: the server checks the id is unused (the
            # same header on every path, so every path's driver does the same work).
            headers={"Nats-Msg-Id": wf, "Swarm-Type": msg.swarm_type,
                     "Nats-Expected-Last-Subject-Sequence": "0"},
        )
        try:
            t1 = await asyncio.wait_for(fut, 60.0)
        except TimeoutError:
            self._pending.pop(wf, None)
            raise RuntimeError(f"flow {wf} got no output within 60 s") from None
        self.last_wf = wf
        return t1 - t0

    async def sequential(self, n: int) -> list[float]:
        self._run += 1
        prefix = f"s{self._run}x"
        return [await self.flow(f"{prefix}{i}", i) for i in range(n)]

    async def in_flight(self, n: int, k: int) -> tuple[float, list[float]]:
        """``n`` flows with ``k`` in flight at any time: (wall seconds, latencies)."""
        self._run += 1
        prefix = f"p{self._run}x"
        counter = itertools.count()
        lats: list[float] = []

        async def lane() -> None:
            while (i := next(counter)) < n:
                lats.append(await self.flow(f"{prefix}{i}", i))

        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(k)))
        return time.perf_counter() - t0, lats

    async def aclose(self) -> None:
        await self.nc.close()


# -- one path, measured --------------------------------------------------------------------

WorkersFor = Callable[[str, str], list[Worker]]
"""(url, namespace) -> the not yet started worker processes of one path."""


async def measure(
    workers_for: WorkersFor,
    url: str,
    server_pid: int | None,
    in_topic: str,
    out_topic: str,
    a: Any,
    message: Callable[[int, int], Message] = work,
    after: After | None = None,
) -> Result:
    """Fresh namespace, start the path's workers, warm up, then the sequential run and
    the in-flight run (``a.seq``, ``a.n``, ``a.inflight``, ``a.warmup``, ``a.size``).
    ``after(url, namespace, workflow_id)``, if given, runs at the end with the last
    completed flow's id; its text is ``Result.note``."""
    import uuid

    from swarmbus.bus import Bus

    ns = f"b{uuid.uuid4().hex[:10]}"
    async with await Bus.connect(url, namespace=ns):
        pass  # the namespace's stream, created the same way for every path
    workers = workers_for(url, ns)
    try:
        for w in workers:
            w.start()
        for w in workers:
            await asyncio.to_thread(w.wait_ready)

        def cpu() -> tuple[float, float]:
            srv = proc_cpu_s(server_pid) if server_pid else float("nan")
            return sum(w.cpu_s() for w in workers), srv

        d = await Driver.connect(url, ns, in_topic, out_topic, a.size, message)
        try:
            await d.sequential(a.warmup)
            await d.in_flight(a.warmup * 4, a.inflight)
            c0, _ = cpu()
            seq = await d.sequential(a.seq)
            c1, s1 = cpu()
            wall, lats = await d.in_flight(a.n, a.inflight)
            c2, s2 = cpu()
        finally:
            await d.aclose()
        note = await after(url, ns, d.last_wf) if after is not None else ""
    finally:
        for w in workers:
            await asyncio.to_thread(w.stop)
    return Result(
        seq_p50_ms=pct(seq, 50) * 1e3,
        seq_p99_ms=pct(seq, 99) * 1e3,
        rate=a.n / wall,
        load_p50_ms=pct(lats, 50) * 1e3,
        load_p99_ms=pct(lats, 99) * 1e3,
        worker_cpu_us_seq=(c1 - c0) / a.seq * 1e6,
        worker_cpu_us_load=(c2 - c1) / a.n * 1e6,
        server_cpu_us_load=(s2 - s1) / a.n * 1e6,
        note=note,
    )


After = Callable[[str, str, str], Coroutine[Any, Any, str]]
"""(url, namespace, a completed flow's workflow id) -> a note on the run (e.g. message
sizes read back from the stream)."""


@dataclass(frozen=True)
class PathSpec:
    """One way of doing the work: its workers, where flows enter and leave, the input.

    ``targets``: whether the run's targets apply to this path against the raw paths
    (not for a path that deliberately does extra work, e.g. the real sandbox), or
    this path's own (p50 ratio at most, throughput ratio at least).
    """

    workers_for: WorkersFor
    in_topic: str
    out_topic: str
    message: Callable[[int, int], Message] = work
    after: After | None = None
    targets: bool | tuple[float, float] = True


async def bench_paths(
    paths: dict[str, PathSpec], a: Any, *, unit: str, p50_target: float, rate_target: float
) -> dict[str, Result]:
    """Every path on one server (embedded unless ``a.nats``), ``a.rounds`` rounds in
    alternating order; prints each round and then the table of medians."""
    from swarmbus.bus import EmbeddedServer

    server = None if a.nats else EmbeddedServer().start_blocking()
    url = a.nats or server.url  # type: ignore[union-attr]
    pid = server.pid if server else None
    try:
        kinds = list(paths)
        per: dict[str, list[Result]] = {k: [] for k in kinds}
        for r in range(a.rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                spec = paths[kind]
                res = await measure(
                    spec.workers_for,
                    url,
                    pid,
                    spec.in_topic,
                    spec.out_topic,
                    a,
                    spec.message,
                    spec.after if r == 0 else None,
                )
                per[kind].append(res)
                print(
                    f"  round {r + 1} {LABELS.get(kind, kind):9}: seq p50 "
                    f"{res.seq_p50_ms:.3f} ms, p99 {res.seq_p99_ms:.3f} ms, "
                    f"{res.rate:,.0f} {unit}/s",
                    flush=True,
                )
                if res.note:
                    print(res.note, flush=True)
        medians = {k: median_result(v) for k, v in per.items()}
        print(f"\nmedians of {a.rounds} round(s):\n")
        no_targets = {k for k, spec in paths.items() if spec.targets is False}
        own = {k: spec.targets for k, spec in paths.items() if isinstance(spec.targets, tuple)}
        print(
            report(
                medians,
                unit=unit,
                p50_target=p50_target,
                rate_target=rate_target,
                no_targets=no_targets,
                own_targets=own,
            )
        )
        return medians
    finally:
        if server is not None:
            server.stop_blocking()
            server.cleanup()


# -- stats and tables ----------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


@dataclass
class Result:
    """One path's figures from one round."""

    seq_p50_ms: float
    seq_p99_ms: float
    rate: float
    load_p50_ms: float
    load_p99_ms: float
    worker_cpu_us_seq: float
    worker_cpu_us_load: float
    server_cpu_us_load: float
    note: str = ""


def median_result(rs: list[Result]) -> Result:
    fields_ = [f for f in Result.__dataclass_fields__ if f != "note"]
    return Result(**{f: statistics.median(getattr(r, f) for r in rs) for f in fields_})


def fmt_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


LABELS = {
    "raw": "raw fetch",
    "rawpull": "raw pull",
    "agent": "swarmbus",
    "team": "team",
    "team-sandbox": "team+sandbox",
}


def report(
    results: dict[str, Result],
    *,
    unit: str,
    p50_target: float,
    rate_target: float,
    no_targets: set[str] | frozenset[str] = frozenset(),
    own_targets: dict[str, tuple[float, float]] | None = None,
) -> str:
    """The table: every path, then each swarmbus path (``agent``, ``team``, ...)
    over each raw path, then the verdicts (not for the paths in ``no_targets``)."""
    raws = [k for k in results if k.startswith("raw")]
    fws = [k for k in results if not k.startswith("raw")]
    pairs = [(f, r) for f in fws for r in raws]
    rows = [
        [
            "",
            *(LABELS.get(k, k) for k in results),
            *(f"{LABELS.get(f, f)}/{LABELS[r]}" for f, r in pairs),
        ]
    ]
    u = unit[:-1]

    def row(label: str, attr: str, f: str) -> None:
        vals = {k: getattr(r, attr) for k, r in results.items()}
        rows.append(
            [
                label,
                *(format(v, f) for v in vals.values()),
                *(f"{vals[fw] / vals[r]:.2f}x" for fw, r in pairs),
            ]
        )

    row("sequential p50 (ms)", "seq_p50_ms", ".3f")
    row("sequential p99 (ms)", "seq_p99_ms", ".3f")
    row(f"{unit}/s, in flight", "rate", ",.0f")
    row("p50 under load (ms)", "load_p50_ms", ".2f")
    row("p99 under load (ms)", "load_p99_ms", ".2f")
    row(f"worker CPU us/{u}, sequential", "worker_cpu_us_seq", ".0f")
    row(f"worker CPU us/{u}, in flight", "worker_cpu_us_load", ".0f")
    row(f"server CPU us/{u}, in flight", "server_cpu_us_load", ".0f")
    lines = [fmt_table(rows), ""]
    for fw, k in pairs:
        if fw in no_targets:
            continue
        r, mine = results[k], results[fw]
        p50_max, rate_min = (own_targets or {}).get(fw, (p50_target, rate_target))
        p50_ratio = mine.seq_p50_ms / r.seq_p50_ms
        rate_ratio = mine.rate / r.rate
        who = "" if fws == ["agent"] else f"{LABELS.get(fw, fw)} "
        lines.append(
            f"{who}vs {LABELS[k]:9}: p50 {p50_ratio:.2f}x (target <= {p50_max}x) "
            f"{'MET' if p50_ratio <= p50_max else 'MISSED'}; "
            f"throughput {rate_ratio:.2f} (target >= {rate_min:.2f}) "
            f"{'MET' if rate_ratio >= rate_min else 'MISSED'}"
        )
    return "\n".join(lines)


def env_line(args_uvloop: bool) -> str:
    import nats.aio.client as nc_mod

    return (
        f"python {sys.version.split()[0]}, nats-py {getattr(nc_mod, '__version__', '?')}, "
        f"loop {'uvloop' if args_uvloop else 'asyncio'}, {os.cpu_count()} CPUs"
    )


def run(main: Callable[[], Coroutine[Any, Any, T]], *, use_uvloop: bool) -> T:
    """``asyncio.run`` on the chosen event loop."""
    factory = None
    if use_uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def quiet_driver_logs() -> None:
    """The driver process only: hide swarmbus's info/warning lines (e.g. "nats
    disconnected" when the set-up connection closes). Workers keep the defaults."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


__all__ = [
    "After",
    "Driver",
    "PathSpec",
    "Result",
    "Work",
    "Worker",
    "WorkersFor",
    "bench_paths",
    "env_line",
    "fmt_table",
    "measure",
    "median_result",
    "pct",
    "proc_cpu_s",
    "quiet_driver_logs",
    "report",
    "run",
    "work",
]


def common_args(
    doc: str | None, *, unit: str, seq: int, n: int, warmup: int
) -> argparse.ArgumentParser:
    """The options every ratio benchmark takes (driver, rounds, sizes, worker settings)."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction,
                   default=importlib.util.find_spec("uvloop") is not None,
                   help="uvloop in driver and workers (default: when installed, the `fast` extra)")
    p.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    p.add_argument("--nats", help="use this server instead of an embedded one")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seq", type=int, default=seq, help=f"sequential {unit}")
    p.add_argument("-n", type=int, default=n, help=f"{unit} in the in-flight run")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--size", type=int, default=1024, help="payload bytes")
    p.add_argument("--concurrency", type=int, default=100, help="handlers per worker process")
    p.add_argument("--batch", type=int, default=100, help="largest pull batch")
    return p
