from __future__ import annotations

import anyio
import pytest

from swarmbus.agents import Agent, Context, Swarm, handles
from swarmbus.bus import Bus
from swarmbus.protocols import DesignSpec, TaskRequest, WorkState, Design

pytestmark = pytest.mark.anyio


class Echo(Agent):
    name = "echo"

    @handles("task")
    async def on_task(self, msg: TaskRequest, ctx: Context[TaskRequest]) -> None:
        await ctx.publish(DesignSpec(state=WorkState(task=msg, design=Design(summary=msg.goal))))


async def test_smoke(nats_url: str, namespace: str) -> None:
    async with Swarm([Echo()], nats=nats_url, namespace=namespace) as swarm:
        bus = swarm.bus
        await bus.publish("wf1", "task", TaskRequest(goal="hello"), msg_id="m1")
        with anyio.fail_after(5):
            while (await bus.last("wf1", "design")) is None:
                await anyio.sleep(0.01)
        got = (await bus.last("wf1", "design"))
        assert got is not None
        env = got.decode()
        assert isinstance(env.message, DesignSpec)
        assert env.message.state.design.summary == "hello"
