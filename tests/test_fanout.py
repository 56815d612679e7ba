"""Fan-out and join on a real nats-server with scripted models: every item runs once,
the join fires exactly once, in item order, whatever the order of completions."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel, ModelError
from swarmbus.agents.workflow import Fanouts, compile_workflow, team
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


def note(seen: list[str], text: str, answer: Any) -> Any:
    seen.append(text)
    return answer


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
            raise ModelError(f"cannot build {name}", model="t:builder")
        return Text(text=f"built {name} from item {name}")


async def run_one(compiled: Any, models: dict[str, Any], nats_url: str, namespace: str,
                  task: TaskRequest | None = None, **team_kw: Any) -> Any:
    """One run of ``compiled`` by a swarm of ``models`` (no tools): its result."""
    with anyio.fail_after(30):
        async with (
            Swarm(team(compiled, models=models, tools={}, **team_kw), nats=nats_url,
                  namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            return await client.result(await client.submit(
                task or TaskRequest(goal="build it")))


async def run_fanout(fanout: dict[str, Any], parts: list[Any], builder: Builder,
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
    return await run_one(compiled, models, nats_url, namespace)


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


@pytest.mark.anyio
async def test_max_parallel_holds(nats_url: str, namespace: str) -> None:
    builder = Builder({k: 0.2 for k in "abcde"})
    with anyio.fail_after(30):
        result = await run_fanout({"max_parallel": 2}, [{"name": k} for k in "abcde"],
                                  builder, nats_url, namespace)
    assert result.status == "approved", result.reason
    assert sorted(builder.calls) == list("abcde")
    assert builder.most == 2


@pytest.mark.anyio
async def test_waves_follow_depends_on(nats_url: str, namespace: str) -> None:
    parts = [{"name": "a"}, {"name": "b"}, {"name": "c", "depends_on": ["a", "b"]},
             {"name": "d", "depends_on": ["a"]}]
    builder = Builder({"a": 0.3, "b": 0.1, "c": 0.05, "d": 0.05})
    with anyio.fail_after(30):
        result = await run_fanout({}, parts, builder, nats_url, namespace)
    assert result.status == "approved", result.reason
    assert builder.started["c"] >= max(builder.ended["a"], builder.ended["b"])
    assert builder.started["d"] >= builder.ended["a"]
    assert builder.most == 2  # a and b, then c and d


@pytest.mark.anyio
async def test_a_failed_item_ends_the_run_with_every_item_paid(
    nats_url: str, namespace: str
) -> None:
    """Without min_ok every item must succeed: the run fails once all finished, its
    spend has every call, and the failure and the skipped dependent are findings."""
    parts = [{"name": "a"}, {"name": "b"}, {"name": "c", "depends_on": ["b"]}]
    builder = Builder(fail=frozenset({"b"}))
    with anyio.fail_after(30):
        result = await run_fanout({}, parts, builder, nats_url, namespace)
    assert result.status == "failed"
    assert "1 of 3 items of step 'build' succeeded" in result.reason
    assert sorted(builder.calls) == ["a", "b"]  # c is skipped: it depends on b
    assert result.spend["builder"].calls == 1  # a's; b's call raised before billing
    where = {f.location for f in result.findings}
    assert where == {"build[b]", "build[c]"}
    assert any("skipped: depends on b" in f.explanation for f in result.findings)


@pytest.mark.anyio
async def test_min_ok_runs_the_join_with_the_rest_as_findings(
    nats_url: str, namespace: str
) -> None:
    parts = [{"name": "a"}, {"name": "b"}, {"name": "c", "depends_on": ["b"]}]
    builder = Builder(fail=frozenset({"b"}))
    seen: list[str] = []
    with anyio.fail_after(30):
        result = await run_fanout({}, parts, builder, nats_url, namespace, min_ok=1,
                                  seen=seen)
    assert result.status == "approved", result.reason
    assert len(seen) == 1 and "did not succeed" in seen[0]
    items = result.artifacts["piece"]["items"]
    assert [(i["key"], i["ok"]) for i in items] == [("a", True), ("b", False), ("c", False)]


@pytest.mark.anyio
async def test_too_many_items_go_back_to_their_producer(nats_url: str, namespace: str) -> None:
    builder = Builder()
    with anyio.fail_after(30):
        result = await run_fanout({"max_items": 2}, [{"name": k} for k in "abc"],
                                  builder, nats_url, namespace)
    assert result.status == "rounds_exhausted"
    assert "above its max_items of 2" in result.reason
    assert builder.calls == []
    assert result.send_backs == {"planner": 2}
    assert result.spend["planner"].calls == 3


@pytest.mark.parametrize(("parts", "words"), [
    ([{"name": "a", "depends_on": ["z"]}], "depends on 'z', which is no item"),
    ([{"name": "a", "depends_on": ["b"]}, {"name": "b", "depends_on": ["a"]}], "a cycle"),
    ([{"name": "a"}, {"name": "a"}], "two items are named 'a'"),
])
def test_a_list_that_cannot_run_is_named(parts: list[dict[str, Any]], words: str) -> None:
    from swarmbus.protocols import FanoutPlan

    _, problems = FanoutPlan.of(parts)
    assert any(words in p for p in problems), problems


@pytest.mark.parametrize(("change", "words"), [
    ({"for_each": "plan.summary"}, "not a list field"),
    ({"for_each": "nope.parts"}, "no artifact 'nope'"),
    ({"routes": {"x": "end"}}, "cannot have `routes`"),
    ({"task": "{{ part.nme }}"}, "Part has no field 'nme' (did you mean 'name'?)"),
    ({"as": "inputs"}, "template name of every step"),
])
def test_the_check_refuses_a_bad_fan_out(change: dict[str, Any], words: str) -> None:
    s = spec()
    s["steps"][1].update(change)
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(Workflow.parse(s))
    assert any(words in p.message for p in caught.value.problems), caught.value.problems


def test_the_check_refuses_a_join_of_no_fan_out() -> None:
    s = spec()
    s["steps"][2]["join"] = "plan"
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(Workflow.parse(s))
    assert any("not a step with `for_each`" in p.message for p in caught.value.problems)
    s = spec()
    del s["steps"][2]["join"]
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(Workflow.parse(s))
    assert any("no step joins 'build'" in p.message for p in caught.value.problems)


async def item_messages(client: SwarmClient, wf_id: str, topic: str) -> list[Any]:
    return [m for m in await client.trail(wf_id) if m.subject.endswith("." + topic)]


@pytest.mark.anyio
async def test_a_duplicate_completion_neither_reruns_the_item_nor_fires_the_join_again(
    nats_url: str, namespace: str
) -> None:
    """While b is still building, a's work is delivered again under another message id
    (what a republish by a crashed producer looks like after the duplicate window): a
    is not built again and the join runs once."""
    compiled = compile_workflow(Workflow.parse(spec()))
    merged: list[str] = []
    republished = anyio.Event()
    box: dict[str, Any] = {}
    builder = Builder({"a": 0.05, "b": 1.0})

    async def build(request: Any) -> Any:
        if "Build b" in user_text(request):
            client, wf_id = box["client"], box["wf_id"]
            for _ in range(100):  # a's completion is recorded first
                done = [m for m in await item_messages(client, wf_id, "step.build")]
                if len(done) >= 2:
                    break
                await anyio.sleep(0.02)
            await anyio.sleep(0.3)
            first = done[0]
            headers = dict(first.headers)
            headers["Nats-Msg-Id"] = "duplicate-of-" + headers["Nats-Msg-Id"]
            await client.bus.js.publish(first.subject, first.data, headers=headers)
            republished.set()
        return await builder(request)

    models = {"planner": FunctionModel(
        lambda r: Plan(parts=[Part(name="a"), Part(name="b")]), name="t:planner"),
        "builder": FunctionModel(build, name="t:builder"),
        "merger": FunctionModel(lambda r: note(merged, user_text(r), Text(text="m")),
                                name="t:merger")}
    with anyio.fail_after(30):
        async with (
            Swarm(team(compiled, models=models, tools={}), nats=nats_url,
                  namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            box["client"] = client
            wf_id = await client.submit(TaskRequest(goal="build it"))
            box["wf_id"] = wf_id
            result = await client.result(wf_id)
            await anyio.sleep(0.5)  # time for a late second join to show
            joins = await item_messages(client, wf_id, "step.merge")
    assert republished.is_set()
    assert result.status == "approved", result.reason
    assert sorted(builder.calls) == ["a", "b"]
    assert len(merged) == 1 and len(joins) == 1


class CrashAfterRecording(Fanouts):
    """Dies (as a killed process would) right after a completion is recorded, before it
    publishes anything, once per item."""

    crashed: list[int] = []

    async def after(self, ctx: Any, wf: Any, step: Any, work: Any, *args: Any,
                    **kw: Any) -> Any:
        if work.item.index not in self.crashed:
            self.crashed.append(work.item.index)
            raise RuntimeError("crash between the record and the publish")
        return await super().after(ctx, wf, step, work, *args, **kw)


@pytest.mark.anyio
async def test_a_crash_after_each_completion_still_fires_the_join_exactly_once(
    nats_url: str, namespace: str
) -> None:
    """Every item's handler dies after its completion is recorded: each redelivery finds
    its completion in the record and does what that completion does, without building
    the item again; waves still follow, the join fires once."""
    from swarmbus.agents.workflow import StepAgent
    from swarmbus.bus import ConsumerSettings

    class Crashing(StepAgent):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.fanouts = CrashAfterRecording()

    CrashAfterRecording.crashed = []
    compiled = compile_workflow(Workflow.parse(spec()))
    builder = Builder()
    merged: list[str] = []
    parts = [Part(name="a"), Part(name="b", depends_on=["a"]), Part(name="c")]
    models = {"planner": FunctionModel(lambda r: Plan(parts=parts), name="t:planner"),
              "builder": FunctionModel(builder, name="t:builder"),
              "merger": FunctionModel(lambda r: note(merged, user_text(r), Text(text="m")),
                                      name="t:merger")}
    fast = ConsumerSettings(retry_delay_s=0.05)
    with anyio.fail_after(30):
        async with (
            Swarm(team(compiled, models=models, tools={}, classes={"builder": Crashing},
                       consumers={"builder": fast}),
                  nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf_id = await client.submit(TaskRequest(goal="build it"))
            result = await client.result(wf_id)
            await anyio.sleep(0.5)
            joins = await item_messages(client, wf_id, "step.merge")
    assert result.status == "approved", result.reason
    assert sorted(CrashAfterRecording.crashed) == [0, 1, 2]
    assert sorted(builder.calls) == ["a", "b", "c"]
    assert len(merged) == 1 and len(joins) == 1
    assert result.spend["builder"].calls == 3


@pytest.mark.anyio
async def test_a_second_round_of_a_loop_is_a_new_set(nats_url: str, namespace: str) -> None:
    """The join sends the work back to the planner once: the second round's fan-out is
    a set of its own (not the first round's completions plus one), and its join fires
    once with the second round's items."""
    from swarmbus.protocols import Review

    s = spec()
    s["artifacts"]["whole"] = "swarmbus.Review"
    s["steps"][2]["routes"] = {"approve": "end", "revise": {"to": "plan", "max": 1}}
    compiled = compile_workflow(Workflow.parse(s))
    builder = Builder()
    merged: list[str] = []
    rounds = iter([["a", "b"], ["c", "d", "e"]])

    def merge(request: Any) -> Review:
        merged.append(user_text(request))
        return Review(decision="revise" if len(merged) == 1 else "approve", summary="m")

    models = {"planner": FunctionModel(
        lambda r: Plan(parts=[Part(name=n) for n in next(rounds)]), name="t:planner"),
        "builder": FunctionModel(builder, name="t:builder"),
        "merger": FunctionModel(merge, name="t:merger")}
    result = await run_one(compiled, models, nats_url, namespace)
    assert result.status == "approved", result.reason
    assert sorted(builder.calls) == ["a", "b", "c", "d", "e"]
    assert len(merged) == 2
    assert "Item a" in merged[0] and "Item c" not in merged[0]
    assert "Item a" not in merged[1] and all(f"Item {k}" in merged[1] for k in "cde")
    items: Any = result.artifacts["piece"]
    assert [i["key"] for i in items["items"]] == ["c", "d", "e"]


@pytest.mark.anyio
async def test_an_item_that_spends_the_budget_stops_its_siblings_before_their_next_call(
    nats_url: str, namespace: str
) -> None:
    """Budget $1.00: the planner pays $0.25 and item b $0.75 while item c is in its
    first call (unpriced tokens: $0). c's answer needs a repair, and the repair is not
    made: c's ledger has seen b's spend. The result keeps every call: $1.00."""
    from swarmbus.agents.models import Billed, Price

    price = Price(input=1.0, output=0.0)
    compiled = compile_workflow(Workflow.parse(spec()))
    calls: list[str] = []

    async def build(request: Any) -> Any:
        text = user_text(request)
        name = text.split("Build ", 1)[1].split()[0]
        calls.append(name)
        if name == "b":
            await anyio.sleep(0.1)
            return Billed(Text(text="built b"), input_tokens=750_000)
        await anyio.sleep(0.8)
        return Billed("not JSON", input_tokens=0)

    models = {"planner": FunctionModel(lambda r: Billed(Plan(parts=[
        Part(name="b"), Part(name="c")]), input_tokens=250_000), name="t:planner", price=price),
        "builder": FunctionModel(build, name="t:builder", price=price),
        "merger": FunctionModel(lambda r: Text(text="m"), name="t:merger", price=price)}
    from swarmbus.protocols import Limits

    result = await run_one(compiled, models, nats_url, namespace,
                           TaskRequest(goal="build it", limits=Limits(budget_usd=1.0)))
    assert result.status == "budget_exceeded", result.reason
    assert sorted(calls) == ["b", "c"]  # c's repair was not made
    assert result.total.cost_usd == pytest.approx(1.0)
    assert result.spend["builder"].cost_usd == pytest.approx(0.75)


def _orders(plan: Any, draw: Any) -> list[tuple[int, bool]]:
    """One possible order of completions: at each point any item in flight finishes."""
    done: list[tuple[int, bool]] = []
    in_flight = list(plan.start())
    while in_flight:
        i = in_flight.pop(draw(len(in_flight)))
        ok = draw(2) == 0
        done.append((i, ok))
        in_flight += plan.replay(done).released
    return done


def test_the_plan_fires_once_at_the_last_completion_in_every_order() -> None:
    """For random lists (dependencies, max_parallel) and any order of completions: no
    item starts twice or before its dependencies succeeded, max_parallel holds, every
    item finishes (run or skipped), exactly one position completes the set, and a
    duplicate completion changes nothing."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from swarmbus.protocols import FanoutPlan

    @settings(max_examples=300, deadline=None)
    @given(st.integers(1, 7), st.data(), st.one_of(st.none(), st.integers(1, 3)))
    def prop(n: int, data: Any, max_parallel: int | None) -> None:
        deps = [sorted(data.draw(st.sets(st.integers(0, i - 1), max_size=2)) if i else [])
                for i in range(n)]
        items = [{"name": f"i{i}", "depends_on": [f"i{d}" for d in deps[i]]}
                 for i in range(n)]
        plan, problems = FanoutPlan.of(items, max_parallel)
        assert problems == []
        done = _orders(plan, lambda k: data.draw(st.integers(0, k - 1)))
        started: list[int] = list(plan.start())
        ok: dict[int, bool] = {}
        in_flight = set(started)
        completes = []
        for p in range(len(done)):
            i, good = done[p]
            ok[i] = good
            in_flight.discard(i)
            progress = plan.replay(done[:p + 1])
            for j in progress.released:
                assert j not in started
                assert all(ok.get(d) for d in plan.deps[j])
                started.append(j)
                in_flight.add(j)
            assert max_parallel is None or len(in_flight) <= max_parallel
            if progress.completed_at == p:
                completes.append(p)
            # a duplicate of any earlier completion, replayed, changes nothing
            dup = plan.replay([*done[:p + 1], done[data.draw(st.integers(0, p))]])
            assert dup.finished == progress.finished and dup.released == []
        final = plan.replay(done)
        assert final.complete and len(final.finished) == n
        assert completes == [len(done) - 1]
        skipped = set(range(n)) - set(started)
        assert all(final.finished[j] is False for j in skipped)

    prop()


@pytest.mark.anyio
async def test_concurrent_and_duplicate_completions_get_one_position_each(
    nats_url: str, namespace: str
) -> None:
    """Three writers per item, racing on the real bucket: each item is recorded once, and
    every writer of an item is told the same position."""
    import random
    from types import SimpleNamespace

    from swarmbus.bus import Bus
    from swarmbus.protocols import ItemResult, WorkItem

    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        fanouts = Fanouts()
        await fanouts.setup(bus)
        ctx = SimpleNamespace(workflow_id="race")
        n = 6
        told: dict[int, set[int]] = {i: set() for i in range(n)}
        writers = [i for i in range(n) for _ in range(3)]
        random.Random(7).shuffle(writers)

        async def write(i: int) -> None:
            item = WorkItem(fanout="build.r1s1", index=i, total=n, key=str(i))
            position, _ = await fanouts.record(
                ctx, item, ItemResult[Any](index=i, key=str(i), ok=True))  # type: ignore[arg-type]
            told[i].add(position)

        async with anyio.create_task_group() as tg:
            for i in writers:
                tg.start_soon(write, i)
        record = json.loads((await (await fanouts.store()).get("race.build.r1s1")) or b"{}")
    order = [i for i, _ in record["done"]]
    assert sorted(order) == list(range(n))
    assert all(len(p) == 1 for p in told.values()), told
    assert {i: order.index(i) for i in range(n)} == {i: next(iter(p)) for i, p in told.items()}


@pytest.mark.anyio
async def test_the_trail_shows_each_item(nats_url: str, namespace: str) -> None:
    from swarmbus.agents.app import render_trail

    compiled = compile_workflow(Workflow.parse(spec()))
    models = {"planner": FunctionModel(lambda r: Plan(parts=[Part(name="a"), Part(name="b")]),
                                       name="t:planner"),
              "builder": FunctionModel(Builder(), name="t:builder"),
              "merger": FunctionModel(lambda r: Text(text="m"), name="t:merger")}
    with anyio.fail_after(30):
        async with (
            Swarm(team(compiled, models=models, tools={}), nats=nats_url,
                  namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf_id = await client.submit(TaskRequest(goal="build it"))
            await client.result(wf_id)
            text = render_trail(wf_id, await client.trail(wf_id))
    assert "plan -> build[a]" in text and "plan -> build[b]" in text
    assert "build -> merge" in text
    lines = [line.split() for line in text.splitlines() if line.strip().startswith("item ")]
    assert [(w[1], w[2], w[-1]) for w in lines] == [("a", "t:builder", "ok"),
                                                    ("b", "t:builder", "ok")]


@pytest.mark.anyio
async def test_an_item_that_ends_the_run_stops_its_siblings_before_their_next_call(
    nats_url: str, namespace: str
) -> None:
    """Item b ends the run (its own code meets the deadline); item c, in its first call,
    needs a repair: the repair is never asked for, the run ended while c worked."""
    from swarmbus.agents.models import LimitReached
    from swarmbus.agents.workflow import StepAgent, StepCall

    calls: list[str] = []

    class Ending(StepAgent):
        async def perform(self, call: StepCall) -> BaseModel:
            if call.item is not None and call.item.key == "b":
                await anyio.sleep(0.1)
                raise LimitReached("deadline_exceeded", "b ran out of time")
            return await super().perform(call)

    async def build(request: Any) -> Any:
        calls.append("c")
        await anyio.sleep(0.8)
        return "not JSON"

    compiled = compile_workflow(Workflow.parse(spec()))
    models = {"planner": FunctionModel(lambda r: Plan(parts=[Part(name="b"), Part(name="c")]),
                                       name="t:planner"),
              "builder": FunctionModel(build, name="t:builder"),
              "merger": FunctionModel(lambda r: Text(text="m"), name="t:merger")}
    with anyio.fail_after(30):
        async with (
            Swarm(team(compiled, models=models, tools={}, classes={"builder": Ending}),
                  nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf_id = await client.submit(TaskRequest(goal="build it"))
            result = await client.result(wf_id)
            await anyio.sleep(1.5)  # c's first call ends; a repair would start now
    assert result.status == "deadline_exceeded" and "b ran out of time" in result.reason
    assert calls == ["c"]


@pytest.mark.anyio
async def test_every_item_starts_at_once_up_to_the_consumers_concurrency(
    nats_url: str, namespace: str
) -> None:
    """16 items, a consumer of 16 handlers: all 16 run together (a pull request used up
    asks again at once, not when a handler ends)."""
    names = [f"p{i}" for i in range(16)]
    builder = Builder({n: 1.0 for n in names})
    with anyio.fail_after(30):
        result = await run_fanout({}, [{"name": n} for n in names], builder, nats_url,
                                  namespace)
    assert result.status == "approved", result.reason
    assert builder.most == 16
    assert max(builder.started.values()) - min(builder.started.values()) < 0.5


@pytest.mark.anyio
async def test_a_run_resumed_in_a_fan_out_runs_only_the_unfinished_items(
    nats_url: str, namespace: str
) -> None:
    """The deadline ends the run while items b and c are building (a is done); `retry`
    resumes it at the fan-out: b and c run again, a does not, the join fires once, and
    the spend has every paid call once: $1.25."""
    from swarmbus.agents.models import Billed, Price
    from swarmbus.protocols import Limits

    price = Price(input=1.0, output=0.0)
    compiled = compile_workflow(Workflow.parse(spec()))
    calls: list[str] = []

    async def build(request: Any) -> Any:
        name = user_text(request).split("Build ", 1)[1].split()[0]
        calls.append(name)
        await anyio.sleep(5.0 if name in "bc" and calls.count(name) == 1 else 0.05)
        return Billed(Text(text=f"built {name}"), input_tokens=250_000)

    def paid(answer: Any) -> Any:
        return Billed(answer, input_tokens=250_000)

    merged: list[str] = []
    models = {"planner": FunctionModel(lambda r: paid(Plan(parts=[
        Part(name="a"), Part(name="b"), Part(name="c")])),
                                       name="t:planner", price=price),
              "builder": FunctionModel(build, name="t:builder", price=price),
              "merger": FunctionModel(lambda r: note(merged, "m", paid(Text(text="m"))),
                                      name="t:merger", price=price)}
    with anyio.fail_after(60):
        async with (
            Swarm(team(compiled, models=models, tools={}), nats=nats_url,
                  namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf_id = await client.submit(TaskRequest(goal="build it",
                                                    limits=Limits(timeout_s=2.0)))
            first = await client.result(wf_id)
            assert first.status == "deadline_exceeded" and first.retryable, first.reason
            assert first.total.cost_usd == pytest.approx(0.50)  # the planner and item a
            await client.retry(wf_id, timeout_s=30)
            result = await client.result(wf_id)
            joins = await item_messages(client, wf_id, "step.merge")
    assert result.status == "approved", result.reason
    assert sorted(calls) == ["a", "b", "b", "c", "c"]
    assert len(merged) == 1 and len(joins) == 1
    assert result.total.cost_usd == pytest.approx(1.25)
    assert result.spend["builder"].cost_usd == pytest.approx(0.75)
    assert [i["value"]["text"] for i in result.artifacts["piece"]["items"]] == [  # type: ignore[index, union-attr, call-overload]
        "built a", "built b", "built c"]


@pytest.mark.anyio
async def test_a_deadline_no_item_meets_ends_the_run_with_every_items_spend(
    nats_url: str, namespace: str
) -> None:
    """Item a is paid and done; item b waits for a builder that is gone (its process
    stopped): the supervisor ends the run at the deadline, and the result has a's
    spend beside the planner's: $0.50."""
    from swarmbus.agents.models import Billed, Price
    from swarmbus.protocols import Limits

    price = Price(input=1.0, output=0.0)
    compiled = compile_workflow(Workflow.parse(spec(max_parallel=1)))

    b_started = anyio.Event()

    async def build(request: Any) -> Any:
        if "Build b" in user_text(request):
            b_started.set()
            await anyio.sleep(60)  # the builder goes away before b is done
        return Billed(Text(text="built"), input_tokens=250_000)

    models = {"planner": FunctionModel(lambda r: Billed(Plan(parts=[
        Part(name="a"), Part(name="b")]), input_tokens=250_000), name="t:planner", price=price),
        "builder": FunctionModel(build, name="t:builder", price=price),
        "merger": FunctionModel(lambda r: Text(text="m"), name="t:merger", price=price)}
    agents = team(compiled, models=models, tools={})
    builder = next(a for a in agents if a.name == "builder")
    with anyio.fail_after(30):
        async with (
            Swarm([a for a in agents if a is not builder], nats=nats_url, namespace=namespace,
                  grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf_id = await client.submit(TaskRequest(goal="build it",
                                                    limits=Limits(timeout_s=4.0)))
            # The builder is there for item a, and leaves while it builds b.
            async with Swarm([builder], nats=nats_url, namespace=namespace, grace_s=0.5):
                await b_started.wait()
            result = await client.result(wf_id)
    assert result.status == "deadline_exceeded", result.reason
    assert result.total.cost_usd == pytest.approx(0.50)
    assert result.spend["builder"].calls == 1


@pytest.mark.anyio
async def test_a_join_template_reads_the_items_field_not_the_dicts_method(
    nats_url: str, namespace: str
) -> None:
    """`{{ artifacts.piece.items[0].key }}` (as the README shows) reads the field; an
    artifact is a JSON object, so no field name is shadowed by a dict method."""
    s = spec()
    s["steps"][2]["task"] = ("first {{ artifacts.piece.items[0].key }} of "
                             "{{ artifacts.piece.items | length }}")
    compiled = compile_workflow(Workflow.parse(s))
    seen: list[str] = []
    models = {"planner": FunctionModel(lambda r: Plan(parts=[Part(name="a"), Part(name="b")]),
                                       name="t:planner"),
              "builder": FunctionModel(Builder(), name="t:builder"),
              "merger": FunctionModel(lambda r: note(seen, user_text(r), Text(text="m")),
                                      name="t:merger")}
    result = await run_one(compiled, models, nats_url, namespace)
    assert result.status == "approved", result.reason
    assert "first a of 2" in seen[0]


@pytest.mark.anyio
async def test_the_trails_costs_add_up_to_the_total(nats_url: str, namespace: str) -> None:
    """The planner's cost is on one item's message only, a released item's message
    carries none, and the join's carries the items': the rows sum to the total."""
    from swarmbus.agents.models import Billed, Price
    from swarmbus.protocols import TaskResult, Usage, Work

    price = Price(input=1.0, output=0.0)

    def paid(answer: Any) -> Any:
        return Billed(answer, input_tokens=250_000)

    compiled = compile_workflow(Workflow.parse(spec(max_parallel=2)))
    models = {"planner": FunctionModel(lambda r: paid(Plan(parts=[
        Part(name=k) for k in "abcd"])), name="t:planner", price=price),
        "builder": FunctionModel(lambda r: paid(Text(text="built")), name="t:builder",
                                 price=price),
        "merger": FunctionModel(lambda r: paid(Text(text="m")), name="t:merger", price=price)}
    with anyio.fail_after(30):
        async with (
            Swarm(team(compiled, models=models, tools={}), nats=nats_url,
                  namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf_id = await client.submit(TaskRequest(goal="build it"))
            result = await client.result(wf_id)
            trail = [m.decode().message for m in await client.trail(wf_id)]
    rows = [m.usage for m in trail if isinstance(m, Work | TaskResult) and m.usage]
    assert result.total.cost_usd == pytest.approx(1.50)  # 1 + 4 + 1 calls at $0.25
    assert Usage.sum(rows).cost_usd == pytest.approx(1.50)


@pytest.mark.anyio
async def test_an_item_failing_on_every_delivery_fails_alone(
    nats_url: str, namespace: str
) -> None:
    """Item b's handler raises on every delivery: on its last one b is recorded as
    failed (not dead-lettered with the whole run), min_ok 1 lets the join run, and the
    spend keeps a's call."""
    from swarmbus.bus import ConsumerSettings

    async def build(request: Any) -> Any:
        if "Build b" in user_text(request):
            raise RuntimeError("a bug in the builder")
        return Text(text="built a")

    s = spec()
    s["steps"][2]["min_ok"] = 1
    compiled = compile_workflow(Workflow.parse(s))
    models = {"planner": FunctionModel(lambda r: Plan(parts=[Part(name="a"), Part(name="b")]),
                                       name="t:planner"),
              "builder": FunctionModel(build, name="t:builder"),
              "merger": FunctionModel(lambda r: Text(text="m"), name="t:merger")}
    fast = ConsumerSettings(retry_delay_s=0.05, max_deliver=3)
    result = await run_one(compiled, models, nats_url, namespace, consumers={"builder": fast})
    assert result.status == "approved", result.reason
    items: Any = result.artifacts["piece"]
    b = items["items"][1]
    assert not b["ok"] and "still failing after 3 deliveries" in b["reason"]
    assert "a bug in the builder" in b["reason"]
    assert result.spend["builder"].calls == 1


@pytest.mark.anyio
async def test_items_in_flight_at_once_cannot_spend_more_than_is_left(
    nats_url: str, namespace: str
) -> None:
    """Budget $1.00, four items at once, each answering 5,000 output tokens at $100 per
    million ($0.50): each call's max_tokens is fitted to a quarter of what is left, so
    the answers are cut at 2,500 tokens and the run ends budget_exceeded at $1.00, not
    at $2.00."""
    from swarmbus.agents.models import Billed, Price
    from swarmbus.protocols import Limits

    price = Price(input=0.0, output=100.0)
    compiled = compile_workflow(Workflow.parse(spec()))

    async def build(request: Any) -> Any:
        await anyio.sleep(0.2)
        return Billed(Text(text="built"), output_tokens=5_000)

    models = {"planner": FunctionModel(lambda r: Plan(parts=[Part(name=k) for k in "abcd"]),
                                       name="t:planner"),
              "builder": FunctionModel(build, name="t:builder", price=price),
              "merger": FunctionModel(lambda r: Text(text="m"), name="t:merger")}
    result = await run_one(compiled, models, nats_url, namespace,
                           TaskRequest(goal="build it", limits=Limits(budget_usd=1.0)))
    assert result.status == "budget_exceeded", result.reason
    assert result.total.cost_usd is not None and result.total.cost_usd <= 1.0 + 1e-9
    assert result.total.cost_usd == pytest.approx(1.0)
