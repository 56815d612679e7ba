"""Fan-out and join on a real nats-server with scripted models: every item runs once,
the join fires exactly once, in item order, whatever the order of completions."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel
from swarmbus.agents.workflow import compile_workflow, team
from swarmbus.bus import SwarmClient
from swarmbus.protocols import (
    TaskRequest,
    Text,
    Workflow,
    WorkflowError,
    data_type,
)


class Part(BaseModel):
    name: str
    depends_on: list[str] = []


@data_type("tests.Plan")
class Plan(BaseModel):
    summary: str = ""
    parts: list[Part]


def spec(**fanout: Any) -> dict[str, Any]:
    return {"name": "fan", "artifacts": {"plan": "tests.Plan", "piece": "swarmbus.Text",
                                         "whole": "swarmbus.Text"},
            "steps": [{"id": "plan", "role": "planner", "output": "plan"},
                      {"id": "build", "role": "builder", "output": "piece",
                       "for_each": "plan.parts", "as": "part",
                       "task": "Build {{ part.name }}", **fanout},
                      {"id": "merge", "role": "merger", "join": "build", "input": "piece",
                       "output": "whole"}]}


def user_text(request: Any) -> str:
    return "\n".join(str(m.content) for m in request.messages)


class Builder:
    """Builds each item after ``delays[name]`` seconds; counts the items in flight."""

    def __init__(self, delays: dict[str, float] | None = None,
                 fail: frozenset[str] = frozenset()) -> None:
        self.delays = delays or {}
        self.fail = fail
        self.in_flight = 0
        self.most = 0
        self.calls: list[str] = []
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    async def __call__(self, request: Any) -> Any:
        text = user_text(request)
        name = text.split("Build ", 1)[1].split()[0]
        self.calls.append(name)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        self.started[name] = time.monotonic()
        try:
            await anyio.sleep(self.delays.get(name, 0.05))
        finally:
            self.in_flight -= 1
            self.ended[name] = time.monotonic()
        if name in self.fail:
            raise ValueError(f"cannot build {name}")
        return Text(text=f"built {name} from item {name}")


async def run_fanout(fanout: dict[str, Any], parts: list[dict[str, Any]], builder: Builder,
                     nats_url: str, namespace: str, *, seen: list[str] | None = None,
                     min_ok: int | None = None) -> Any:
    s = spec(**fanout)
    if min_ok is not None:
        s["steps"][2]["min_ok"] = min_ok
    compiled = compile_workflow(Workflow.parse(s))

    def merge(request: Any) -> Text:
        text = user_text(request)
        if seen is not None:
            seen.append(text)
        return Text(text="merged")

    models = {"planner": FunctionModel(lambda r: Plan(parts=[Part(**p) for p in parts]),
                                       name="t:planner"),
              "builder": FunctionModel(builder, name="t:builder"),
              "merger": FunctionModel(merge, name="t:merger")}
    async with (
        Swarm(team(compiled, models=models, tools={}), nats=nats_url,
              namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        wf_id = await client.submit(TaskRequest(goal="build it"))
        return await client.result(wf_id)


@pytest.mark.anyio
async def test_every_item_runs_once_and_the_join_sees_them_in_item_order(
    nats_url: str, namespace: str
) -> None:
    # The last item finishes first: the join still lists them in item order.
    builder = Builder({"a": 0.6, "b": 0.3, "c": 0.05})
    seen: list[str] = []
    with anyio.fail_after(30):
        result = await run_fanout({}, [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                                  builder, nats_url, namespace, seen=seen)
    assert result.status == "approved", result.reason
    assert sorted(builder.calls) == ["a", "b", "c"]
    assert builder.most == 3
    items = result.artifacts["piece"]["items"]
    assert [i["key"] for i in items] == ["a", "b", "c"]
    assert [i["value"]["text"] for i in items] == [f"built {k} from item {k}" for k in "abc"]
    assert len(seen) == 1  # the join ran once
    assert seen[0].index("Item a") < seen[0].index("Item b") < seen[0].index("Item c")
    assert result.spend["builder"].calls == 3
