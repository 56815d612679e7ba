"""Run-time mechanics that are not visible in a workflow's outcome: how the first task of a
workflow id is read back, and the garbage-collector tuning a swarm process does."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from swarmbus.bus import Bus
from swarmbus.protocols import TaskRequest

pytestmark = pytest.mark.anyio


async def test_first_task_is_read_from_any_replica_or_else_from_the_leader(
    nats_url: str, namespace: str
) -> None:
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        await bus.publish("wf-1", "task", TaskRequest(goal="the first"), msg_id="m-1")
        await bus.publish("wf-1", "task", TaskRequest(goal="a later one"), msg_id="m-2")

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
