"""Run-time mechanics that are not visible in a workflow's outcome: how the first task of a
workflow id is read back, the garbage-collector tuning a swarm process does, and what a
cancelled owner of a swarm or a connection is left with."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from contextlib import AsyncExitStack

import anyio
import pytest

from swarmbus.agents import Agent, Context, Swarm, handles
from swarmbus.bus import Bus, SwarmClient
from swarmbus.protocols import Meta, TaskRequest

pytestmark = pytest.mark.anyio


async def test_first_task_is_read_from_any_replica_or_else_from_the_leader(
    nats_url: str, namespace: str
) -> None:
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        await bus.publish("wf-1", "task", TaskRequest(goal="the first"), Meta("m-1"))
        await bus.publish("wf-1", "task", TaskRequest(goal="a later one"), Meta("m-2"))

        direct = await bus.first("wf-1", "task")  # a direct get
        assert direct is not None
        first = direct.decode().message
        assert isinstance(first, TaskRequest) and first.goal == "the first"
        # Only the message's own headers: none of those a direct get adds.
        assert set(direct.headers) == {"Swarm-Type", "Nats-Msg-Id", "Swarm-Round"}
        assert await bus.first("wf-2", "task") is None

        # A stream made without direct gets (say, by another tool) answers through its
        # leader: the same message, the same headers.
        info = await bus.js.stream_info(bus.stream_name)
        info.config.allow_direct = False
        await bus.js.update_stream(info.config)
        leader = await bus.first("wf-1", "task")
        assert leader is not None
        assert leader == direct  # sequence, subject, body, headers, the server's time
        assert await bus.first("wf-2", "task") is None


class Idle(Agent):
    @handles("task")
    async def on_task(self, msg: TaskRequest, ctx: Context[TaskRequest]) -> None: ...


async def test_a_swarm_cancelled_in_an_exit_stack_ends_its_task(
    nats_url: str, namespace: str
) -> None:
    """A task holding a swarm and a client in an ``AsyncExitStack`` (as ``swarmbus eval``
    does), cancelled by its task group: the swarm used to re-raise the cancellation it was
    given, the stack chained it to itself, and anyio's task group looped forever on it."""
    running = anyio.Event()
    ended: list[BaseException] = []

    async def holds() -> None:
        try:
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(
                    Swarm([Idle()], nats=nats_url, namespace=namespace, grace_s=1))
                await stack.enter_async_context(
                    await SwarmClient.connect(nats_url, namespace=namespace))
                running.set()
                await anyio.sleep_forever()
        except BaseException as e:
            ended.append(e)
            raise

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holds)
            await running.wait()
            tg.cancel_scope.cancel()
    seen: list[BaseException] = []
    link: BaseException | None = ended[0]
    while link is not None:
        assert all(link is not s for s in seen), "an exception context that loops"
        seen.append(link)
        link = link.__context__


async def test_a_cancelled_close_still_closes_the_connection(
    nats_url: str, namespace: str
) -> None:
    bus = await Bus.connect(nats_url, namespace=namespace)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await bus.aclose()  # the drain gives way; the close does not
    assert bus.nc.is_closed


_SWARM_GC = textwrap.dedent("""
    import gc, sys
    import anyio
    from swarmbus.agents import Agent, Context, Swarm, handles
    from swarmbus.protocols import TaskRequest

    class Idle(Agent):
        @handles("task")
        async def on_task(self, msg: TaskRequest, ctx: Context[TaskRequest]) -> None: ...

    async def main() -> None:
        before = gc.get_threshold()
        tune = sys.argv[3] == "tune"
        async with Swarm([Idle()], nats=sys.argv[1], namespace=sys.argv[2], tune_gc=tune,
                         announce=False, dead_letters=False):
            during = gc.get_threshold()
        print("GC", before[0], during[0], gc.get_freeze_count() > 0)

    anyio.run(main)
""")


@pytest.mark.parametrize(("mode", "frozen"), [("tune", True), ("leave", False)])
def test_a_swarm_tunes_the_collector_unless_told_not_to(
    nats_url: str, namespace: str, mode: str, frozen: bool
) -> None:
    stdout = subprocess.run(
        [sys.executable, "-c", _SWARM_GC, nats_url, namespace, mode],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    line = next(ln for ln in stdout.splitlines() if ln.startswith("GC "))  # logs go to stdout
    before, during, was_frozen = line.split()[1:]
    # Tuned: the interpreter's first threshold (700 on CPython 3.11) raised to 10,000.
    expected = max(int(before), 10_000) if mode == "tune" else int(before)
    assert (int(during), was_frozen) == (expected, str(frozen))
