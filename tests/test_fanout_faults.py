"""Fan-out and join under a real ``kill -9``: the builder of a ``for_each`` step runs in
its own process(es) and is killed with SIGKILL mid-run, then restarted.

The planner and the merger run in this process; the builder's processes log every
call, record and publish to an event file (``_fanout_kill_helpers``). What happened is
read from the stream (the run's trail), the ``joins`` bucket (the record of
completions) and those events, never from what a client happened to see. Each test
prints its counts (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from _fanout_kill_helpers import (
    KillPlan,
    Part,
    built_text,
    compiled,
    read_events,
    spawn_builder,
    user_text,
)

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel
from swarmbus.agents.workflow import team
from swarmbus.bus import AGENTS_BUCKET, AGENTS_STORAGE, Bus, SwarmClient
from swarmbus.protocols import TaskRequest, TaskResult, Text, Work

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

T = TypeVar("T")
BUILDER = compiled().consumer("builder")
MERGER = compiled().consumer("merger")


async def poll(check: Callable[[], Awaitable[T | None]], *, every_s: float = 0.02) -> T:
    """Call ``check`` until it returns something truthy; bound it with fail_after."""
    while True:
        if value := await check():
            return value
        await anyio.sleep(every_s)


async def kill_9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    while proc.poll() is None:
        await anyio.sleep(0.02)
    assert proc.returncode == -signal.SIGKILL


async def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every live process and wait for it: they drain and exit 0."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
    for p in live:
        while p.poll() is None:
            await anyio.sleep(0.02)
        assert p.returncode == 0, f"pid {p.pid} exited with {p.returncode}"


async def announced(bus: Bus, pid: int) -> None:
    """Until the builder in process ``pid`` announces itself (its consumer is live)."""
    store = await bus.key_value(AGENTS_BUCKET, ttl_s=20, storage=AGENTS_STORAGE)

    async def live() -> bool:
        return any(k.startswith("builder.") and f"-{pid}-" in k for k in await store.keys())

    await poll(live, every_s=0.05)


def parts_of(delays: tuple[float, ...]) -> list[Part]:
    """Items a, b, c, ... each with a spec of its own (random, so the result of an
    item can only have come from that item's input) and a build time in seconds."""
    return [Part(name=chr(ord("a") + i), spec=f"spec-{chr(ord('a') + i)}-{secrets.token_hex(4)}",
                 delay_s=d) for i, d in enumerate(delays)]


@asynccontextmanager
async def planner_and_merger(nats_url: str, namespace: str, parts: list[Part],
                             merged: list[str], gate: anyio.Event | None = None,
                             ) -> AsyncIterator[None]:
    """The planner (answers ``parts``) and the merger (appends each prompt it gets to
    ``merged``, after ``gate`` is set) in this process, with the supervisor."""

    async def merge(request: Any) -> Text:
        if gate is not None:
            await gate.wait()
        merged.append(user_text(request))
        return Text(text="merged")

    models = {"planner": FunctionModel(lambda r: KillPlan(parts=parts), name="t:planner"),
              "merger": FunctionModel(merge, name="t:merger")}
    async with Swarm(team(compiled(), models=models, roles=["planner", "merger"], tools={}),
                     nats=nats_url, namespace=namespace, grace_s=3):
        yield


class Run:
    """One run's fan-out as stored: the record of completions in the ``joins`` bucket
    and the trail."""

    def __init__(self, bus: Bus, wf_id: str) -> None:
        self.bus, self.wf_id = bus, wf_id
        self.fanout = ""

    async def topic(self, topic: str) -> list[Any]:
        return [m for m in await self.bus.history(self.wf_id)
                if m.subject.endswith(f".{topic}")]

    async def record(self) -> list[tuple[int, bool]]:
        """The fan-out's completions so far, in their order ([] before the first)."""
        if not self.fanout:
            items = await self.topic("step.build")
            if not items:
                return []
            work = items[0].decode().message
            assert isinstance(work, Work) and work.item is not None
            self.fanout = work.item.fanout
        store = await self.bus.key_value("joins")
        raw = await store.get(f"{self.wf_id}.{self.fanout}")
        return [(int(i), bool(ok)) for i, ok in json.loads(raw)["done"]] if raw else []

    async def fired(self) -> bool:
        store = await self.bus.key_value("joins")
        return await store.get(f"{self.wf_id}.{self.fanout}.fired") is not None

    async def settled(self) -> None:
        """Until the builder's and the merger's consumers have nothing pending or unacked
        (a late redelivery, or a second join, would show after this)."""

        async def check() -> bool:
            for durable in (BUILDER, MERGER):
                info = await self.bus.js.consumer_info(self.bus.stream_name, durable)
                if info.num_pending or info.num_ack_pending:
                    return False
            return True

        await poll(check, every_s=0.1)


@dataclass(frozen=True)
class AtKill:
    """What the killed process had done with each item, by its events (final: it is gone)."""

    pid: int
    record: list[tuple[int, bool]]
    """The record of completions read right after the process died."""
    mid_call: frozenset[str]
    """Items whose build started in it and never finished."""
    built: frozenset[str]
    """Items it built whose completion it did not record."""


def at_kill(events: Path, pid: int, record: list[tuple[int, bool]]) -> AtKill:
    mine = [e for e in read_events(events) if e["pid"] == pid]
    called = {e["item"] for e in mine if e["e"] == "call"}
    built = {e["item"] for e in mine if e["e"] == "built"}
    recorded = {chr(ord("a") + e["index"]) for e in mine if e["e"] == "recorded"}
    return AtKill(pid, record, frozenset(called - built), frozenset(built - recorded))


def check_result(result: TaskResult, parts: list[Part], merged: list[str], merges: list[Any],
                 record: list[tuple[int, bool]]) -> None:
    """Approved; the merger ran once on one join message; each item's result, in item
    order, was built from that item's own input; the record has each item once, ok."""
    assert result.status == "approved", result.reason
    assert len(merged) == 1, f"the merger ran {len(merged)} times"
    assert len(merges) == 1, f"{len(merges)} join messages (step.merge) in the trail"
    items: Any = result.artifacts["piece"]
    items = items["items"]
    assert [i["key"] for i in items] == [p.name for p in parts]
    assert [i["index"] for i in items] == list(range(len(parts)))
    assert [i["ok"] for i in items] == [True] * len(parts)
    assert [i["value"]["text"] for i in items] == [built_text(p.name, p.spec) for p in parts]
    for p in parts:  # the merger saw every item's own result
        assert built_text(p.name, p.spec) in merged[0]
    assert sorted(i for i, _ in record) == list(range(len(parts))), record
    assert all(ok for _, ok in record), record
    assert result.spend["builder"].calls == len(parts)  # each item billed once


def report(title: str, **figures: object) -> None:
    print(f"\n[{title}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.mark.timeout(90)
async def test_kill_9_a_builder_replica_between_completions(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Two builder replicas; items a and b build fast, c and d slowly. Once the record
    holds one or two completions, a replica with a build in flight is SIGKILLed and
    restarted. Its unfinished items are redelivered and built again (each at most
    twice); an item whose completion was recorded is never built again; the join
    fires exactly once with every item's own result, in item order."""
    events = tmp_path / "builder.jsonl"
    parts = parts_of((0.3, 0.6, 4.0, 4.0))
    merged: list[str] = []
    replicas: dict[str, subprocess.Popen[bytes]] = {}

    def start(replica: str) -> subprocess.Popen[bytes]:
        p = spawn_builder(nats_url, namespace, events, replica=replica, ack_wait_s=3.0)
        procs.append(p)
        replicas[replica] = p
        return p

    with anyio.fail_after(75):
        t0 = time.monotonic()
        for replica in ("r1", "r2"):
            start(replica)
        async with (
            await Bus.connect(nats_url, namespace=namespace) as bus,
            planner_and_merger(nats_url, namespace, parts, merged),
        ):
            client = SwarmClient(bus)
            for proc in replicas.values():
                await announced(bus, proc.pid)
            wf_id = await client.submit(TaskRequest(goal="build it"))
            run = Run(bus, wf_id)

            async def target() -> tuple[str, subprocess.Popen[bytes]] | None:
                """A replica with a build in flight, once 1 or 2 completions are recorded."""
                if not 1 <= len(await run.record()) <= 2:
                    return None
                for replica, proc in replicas.items():
                    mine = [e for e in read_events(events) if e["pid"] == proc.pid]
                    calls = Counter(e["item"] for e in mine if e["e"] == "call")
                    calls.subtract(e["item"] for e in mine if e["e"] == "built")
                    if any(n > 0 for n in calls.values()):
                        return replica, proc
                return None

            replica, victim = await poll(target)
            await kill_9(victim)
            killed = at_kill(events, victim.pid, await run.record())
            restarted = start(replica)
            await announced(bus, restarted.pid)
            result = await client.result(wf_id)
            await run.settled()
            record = await run.record()
            merges = await run.topic("step.merge")
            dead = await run.topic("deadletter")
            wall = time.monotonic() - t0
        await stop(procs)

    every = read_events(events)
    calls = Counter(e["item"] for e in every if e["e"] == "call")
    before = {chr(ord("a") + i) for i, _ in killed.record}
    report("kill -9 a builder replica between completions", wall_s=round(wall, 1),
           killed=replica, recorded_at_kill=[chr(ord("a") + i) for i, _ in killed.record],
           mid_call_at_kill=sorted(killed.mid_call),
           built_not_recorded_at_kill=sorted(killed.built), calls=dict(sorted(calls.items())),
           redeliveries=sum(1 for e in every if e["e"] == "handle" and e["delivered"] > 1),
           order=record)

    # The kill landed where it was aimed: between two completions, a build in flight.
    assert 1 <= len(killed.record) <= 2 and killed.mid_call, killed
    check_result(result, parts, merged, merges, record)
    assert dead == []
    for p in parts:
        if p.name in killed.mid_call:
            # Its call never finished, so nothing was cached: built again, once.
            assert calls[p.name] == 2, (p.name, calls)
        elif p.name in killed.built:
            # Built, not yet recorded: served from the cache unless the kill came
            # between the answer and the cache put.
            assert 1 <= calls[p.name] <= 2, (p.name, calls)
        else:
            assert calls[p.name] == 1, (p.name, calls)
    assert before.isdisjoint(killed.mid_call | killed.built)
    # The record kept the completions made before the kill, in their order.
    assert record[:len(killed.record)] == killed.record


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", ["before_the_join", "after_the_join"])
async def test_kill_9_the_builder_once_every_completion_is_recorded(
    where: str, nats_url: str, namespace: str, tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """The builder holds each item after its completion is recorded: before anything the
    completion releases is published (``before_the_join``), or after, before the ack
    (``after_the_join``). It is killed once all four completions are recorded and the
    one that finished the set holds, then restarted. The merger answers only once the
    restart has replayed every completion, so the run is live throughout: every
    redelivered item finds its completion in the record, calls no model and replays
    its position; the join is published exactly once (by the redelivery of the
    completion that finished the set when the kill came before it, not again when it
    came after) and the merger runs once."""
    events = tmp_path / "builder.jsonl"
    parts = parts_of((0.2, 0.4, 0.6, 0.8))
    merged: list[str] = []
    n = len(parts)
    before = where == "before_the_join"
    aim = "after" if before else "published"
    gate = anyio.Event()

    with anyio.fail_after(75):
        t0 = time.monotonic()
        first = spawn_builder(nats_url, namespace, events, replica="r1",
                              hold_s=60.0 if before else 0.0,
                              hold_after_s=0.0 if before else 60.0)
        procs.append(first)
        async with (
            await Bus.connect(nats_url, namespace=namespace) as bus,
            planner_and_merger(nats_url, namespace, parts, merged, gate),
        ):
            client = SwarmClient(bus)
            await announced(bus, first.pid)
            wf_id = await client.submit(TaskRequest(goal="build it"))
            run = Run(bus, wf_id)

            async def last_held() -> bool:
                """The completion that finished the set is recorded and holding."""
                return any(e["e"] == aim and e["position"] == n - 1
                           and e["pid"] == first.pid for e in read_events(events))

            await poll(last_held)
            await kill_9(first)
            killed = at_kill(events, first.pid, await run.record())
            merges_at_kill = len(await run.topic("step.merge"))
            fired_at_kill = await run.fired()
            second = spawn_builder(nats_url, namespace, events, replica="r1")
            procs.append(second)
            await announced(bus, second.pid)

            async def replayed_all() -> bool:
                return sum(1 for e in read_events(events)
                           if e["e"] == "published" and e["pid"] == second.pid) >= n

            await poll(replayed_all)
            merges_before_merger = len(await run.topic("step.merge"))
            gate.set()
            result = await client.result(wf_id)
            await run.settled()
            record = await run.record()
            merges = await run.topic("step.merge")
            dead = await run.topic("deadletter")
            wall = time.monotonic() - t0
        await stop(procs)

    every = read_events(events)
    calls = Counter(e["item"] for e in every if e["e"] == "call")
    later = [e for e in every if e["pid"] == second.pid]
    replayed = sorted(e["position"] for e in later if e["e"] == "after")
    completes = [e["position"] for e in later if e["e"] == "published" and e["completes"]]
    report(f"kill -9 the builder once every completion is recorded, {where}",
           wall_s=round(wall, 1), recorded_at_kill=killed.record,
           merges_at_kill=merges_at_kill, fired_at_kill=fired_at_kill,
           merges_after_replays=merges_before_merger,
           calls=dict(sorted(calls.items())), replayed_positions=replayed,
           redelivered=sum(1 for e in later if e["e"] == "handle" and e["delivered"] > 1),
           later_events=dict(Counter(e["e"] for e in later)))

    # The kill landed where it was aimed: every completion recorded, the join not yet
    # published (before), or published and marked fired, the deliveries not acked (after).
    assert len(killed.record) == n, killed
    assert (merges_at_kill, fired_at_kill) == ((0, False) if before else (1, True))
    check_result(result, parts, merged, merges, record)
    assert dead == []
    assert record == killed.record  # the redeliveries appended nothing
    assert calls == dict.fromkeys((p.name for p in parts), 1)  # no item built again
    assert not any(e["e"] in ("call", "recorded") for e in later)
    # Every item's delivery was unacked at the kill, so each came again to the restart,
    # and replayed its own position; the one that finished the set published the join
    # (before), or found it published (after): one join message either way.
    assert sum(1 for e in later if e["e"] == "handle" and e["delivered"] > 1) == n
    assert replayed == list(range(n))
    assert completes == [n - 1]
    assert merges_before_merger == 1
