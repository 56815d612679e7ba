"""Configurable test agents, run in this process or as their own process.

As a script (what the failure tests start with ``sys.executable``)::

    python tests/agent_proc.py --nats URL --namespace NS --agent worker --replica r1 \
        --events FILE [--ack-wait 1 --max-deliver 3 --retry-delay 0.05 --concurrency 2]

runs ``Swarm([Worker(...)]).serve()`` until SIGTERM. Every handler start and
finish is appended to ``--events`` as a JSON line, so a test can see what is in
flight and what each replica handled. The helpers below start such processes and
read their events and the stream.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
from nats.js.api import ConsumerInfo

from swarmbus.agents import Agent, Context, Swarm, handles
from swarmbus.bus import AGENTS_BUCKET, AGENTS_STORAGE, Bus, ConsumerSettings
from swarmbus.protocols import Message, message_type

T = TypeVar("T")


@message_type("tests.Job", topics=("job",))
class Job(Message):
    n: int
    sleep_s: float = 0.0
    die: bool = False
    """The handler SIGKILLs its own process, every time it gets this job."""


@message_type("tests.Done", topics=("done",))
class Done(Message):
    n: int
    agent: str
    replica: str


class Worker(Agent):
    """Handles ``job``: records the start, sleeps, publishes ``Done``, records the end."""

    def __init__(
        self,
        *,
        name: str = "worker",
        replica: str = "r0",
        events: Path | None = None,
        consumer: ConsumerSettings | None = None,
    ) -> None:
        super().__init__(name=name, consumer=consumer)
        self.replica = replica
        self.handled: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._events: IO[str] | None = events.open("a", buffering=1) if events else None

    def _event(self, event: str, n: int) -> None:
        if self._events is not None:
            line = json.dumps({"event": event, "n": n, "agent": self.name,
                               "replica": self.replica, "t": round(time.time(), 3)})
            self._events.write(line + "\n")
            self._events.flush()

    @handles("job")
    async def on_job(self, msg: Job, ctx: Context[Job]) -> None:
        self._event("start", msg.n)
        if msg.die:
            os.kill(os.getpid(), signal.SIGKILL)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(msg.sleep_s)
        finally:
            self.in_flight -= 1
        await ctx.publish(Done(n=msg.n, agent=self.name, replica=self.replica))
        self.handled.append(msg.n)
        self._event("done", msg.n)

    async def aclose(self) -> None:
        if self._events is not None:
            self._events.close()


# -- helpers for the tests ------------------------------------------------------------------


def spawn(
    nats_url: str,
    namespace: str,
    *,
    replica: str,
    events: Path,
    agent: str = "worker",
    ack_wait_s: float = 5.0,
    max_deliver: int = 5,
    retry_delay_s: float = 0.05,
    concurrency: int = 4,
    grace_s: float = 10.0,
) -> subprocess.Popen[bytes]:
    """Start one replica as its own process; its output goes to ``<events>.log``."""
    args = [
        sys.executable, str(Path(__file__).resolve()), "--nats", nats_url,
        "--namespace", namespace, "--agent", agent, "--replica", replica,
        "--events", str(events), "--ack-wait", str(ack_wait_s),
        "--max-deliver", str(max_deliver), "--retry-delay", str(retry_delay_s),
        "--concurrency", str(concurrency), "--grace", str(grace_s),
    ]
    with events.with_suffix(".log").open("ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON lines written so far (a half-written last line is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def numbers(path: Path, event: str) -> list[int]:
    return [e["n"] for e in read_events(path) if e["event"] == event]


async def until(check: Callable[[], Awaitable[T | None]], *, every_s: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy, and return that.
    (Bound it with ``anyio.fail_after``.)"""
    while True:
        if value := await check():
            return value
        await anyio.sleep(every_s)


async def until_true(check: Callable[[], object], *, every_s: float = 0.02) -> None:
    """Poll a plain predicate until it is true."""
    while True:
        if check():
            return
        await anyio.sleep(every_s)


async def wait_announced(bus: Bus, agent: str, pids: Sequence[int]) -> None:
    """Wait until each process in ``pids`` announces ``agent`` (its consumers are live)."""
    store = await bus.key_value(AGENTS_BUCKET, ttl_s=20, storage=AGENTS_STORAGE)

    async def live() -> bool:
        keys = await store.keys()
        return all(any(k.startswith(f"{agent}.") and f"-{pid}-" in k for k in keys) for pid in pids)

    await until(live)


async def outputs(bus: Bus, workflow_id: str, topic: str = "done") -> list[Message]:
    """Every message stored on ``topic`` of one workflow, decoded, oldest first."""
    return [
        m.decode().message
        for m in await bus.history(workflow_id)
        if m.subject.endswith(f".{topic}")
    ]


async def done_by(bus: Bus, workflow_id: str, agent: str = "worker") -> list[Done]:
    return [m for m in await outputs(bus, workflow_id) if isinstance(m, Done) and m.agent == agent]


async def wait_done(bus: Bus, workflow_id: str, count: int, agent: str = "worker") -> list[Done]:
    """Poll the stream until ``count`` ``Done`` outputs of ``agent`` are stored."""

    async def enough() -> list[Done] | None:
        done = await done_by(bus, workflow_id, agent)
        return done if len(done) >= count else None

    return await until(enough, every_s=0.05)


async def settled(bus: Bus, durable: str = "worker") -> ConsumerInfo:
    """Wait until the durable consumer has nothing pending and nothing unacked."""

    async def check() -> ConsumerInfo | None:
        info = await bus.js.consumer_info(bus.stream_name, durable)
        return info if info.num_ack_pending == 0 and info.num_pending == 0 else None

    return await until(check, every_s=0.05)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nats", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--agent", default="worker")
    p.add_argument("--replica", default="r0")
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--ack-wait", type=float, default=5.0)
    p.add_argument("--max-deliver", type=int, default=5)
    p.add_argument("--retry-delay", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--grace", type=float, default=10.0)
    a = p.parse_args(argv)
    settings = ConsumerSettings(
        ack_wait_s=a.ack_wait, max_deliver=a.max_deliver, retry_delay_s=a.retry_delay,
        concurrency=a.concurrency,
    )
    worker = Worker(name=a.agent, replica=a.replica, events=a.events, consumer=settings)
    swarm = Swarm([worker], nats=a.nats, namespace=a.namespace, grace_s=a.grace)
    anyio.run(swarm.serve)


if __name__ == "__main__":
    main()
