"""Property: whatever the workflow, the answers, the deadline and a cancel, a run keeps its
promises, on a real nats-server.

Random workflows are a line of 2 to 5 steps; each step after the first may route back to
any earlier step over a capped edge (``max`` 0 to 2), go on, or stop (``{end: failed}``);
the last one's ``go`` ends the run. Each step's model picks its answer from a seeded
random, after a random latency, and bills every answer (``Billed``, priced); 30% of
first answers are invalid, so a billed call is followed by a (slower) repair that a
deadline or a cancel may cut. Each example
runs one to three runs of its workflow at once, each with a random ``timeout_s`` (0.5 to
3 s), some cancelled at a random moment. For every run:

- it ends exactly once (one result in the stream) and no message is dead-lettered;
- its status is one that a route (``approved``, ``failed``), a used-up cap
  (``rounds_exhausted``), the deadline or the cancel explains;
- its ``routes`` and ``send_backs`` never exceed their caps;
- it ends no later than 2 s after its deadline;
- its ``total`` is exactly the calls the models billed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from swarmbus.agents import Swarm
from swarmbus.agents.models import Billed, FunctionModel, Model, ModelRequest, Price, Reply
from swarmbus.agents.testing import new_namespace
from swarmbus.agents.workflow import compile_workflow, team
from swarmbus.bus import ConsumerSettings, StoredMessage, SwarmClient
from swarmbus.protocols import (
    CompiledWorkflow,
    Limits,
    TaskRequest,
    TaskResult,
    Text,
    Workflow,
)

pytestmark = [pytest.mark.anyio]

PRICE = Price(input=1.0, output=0.0)  # USD per million input tokens
LATE_S = 2.0
"""A run ends no later than this after its deadline."""
EARLY_S = 0.1
"""Clock slack: a deadline_exceeded or cancelled ending is not before its cause."""


class Choice1(BaseModel):
    decision: Literal["go", "back1", "stop"]
    summary: str


class Choice2(BaseModel):
    decision: Literal["go", "back2", "stop"]
    summary: str


class Choice3(BaseModel):
    decision: Literal["go", "back3", "stop"]
    summary: str


class Choice4(BaseModel):
    decision: Literal["go", "back4", "stop"]
    summary: str


CHOICES: dict[int, type[BaseModel]] = {1: Choice1, 2: Choice2, 3: Choice3, 4: Choice4}


@dataclass(frozen=True)
class RunPlan:
    seed: int
    timeout_s: float
    latency_s: float
    """Each call waits up to this long before it answers."""
    cancel_after_s: float | None


@dataclass(frozen=True)
class Plan:
    steps: int
    backs: dict[int, tuple[int, int]]
    """Step index -> (the earlier step it may send back to, the edge's max)."""
    runs: list[RunPlan]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(2, 5))
    backs = {}
    for i in range(1, n):
        if draw(st.booleans()):
            backs[i] = (draw(st.integers(0, i - 1)), draw(st.integers(0, 2)))
    runs = draw(st.lists(st.builds(
        RunPlan,
        seed=st.integers(0, 2**32 - 1),
        timeout_s=st.floats(0.5, 3.0),
        latency_s=st.sampled_from([0.0, 0.05, 0.2, 0.5]),
        cancel_after_s=st.one_of(st.none(), st.floats(0.0, 3.0)),
    ), min_size=1, max_size=3))
    return Plan(n, backs, runs)


def workflow(plan: Plan) -> CompiledWorkflow:
    steps: list[dict[str, Any]] = []
    artifacts: dict[str, str] = {}
    for i in range(plan.steps):
        step: dict[str, Any] = {"id": f"s{i}", "role": f"r{i}", "output": f"a{i}"}
        if i in plan.backs:
            to, cap = plan.backs[i]
            artifacts[f"a{i}"] = f"test_run_property:Choice{i}"
            step["routes"] = {"go": f"s{i + 1}" if i + 1 < plan.steps else "end",
                              f"back{i}": {"to": f"s{to}", "max": cap},
                              "stop": {"end": "failed"}}
        else:
            artifacts[f"a{i}"] = "swarmbus.Text"
        steps.append(step)
    return compile_workflow(Workflow.parse({"name": "line", "artifacts": artifacts,
                                            "steps": steps}))


@dataclass
class Billing:
    """What the models billed, per run."""

    calls: dict[int, int] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)

    def add(self, run: int, tokens: int) -> None:
        self.calls[run] = self.calls.get(run, 0) + 1
        self.tokens[run] = self.tokens.get(run, 0) + tokens


def models(plan: Plan, billing: Billing) -> dict[str, Model]:
    rngs = {k: random.Random(r.seed) for k, r in enumerate(plan.runs)}

    def step_model(i: int) -> FunctionModel:
        tokens = 1000 * (i + 1)

        async def answer(request: ModelRequest[Any]) -> Reply:
            run = int(request.messages[0].content.split("## Goal\n\nrun ", 1)[1].split()[0])
            rng, spec = rngs[run], plan.runs[run]
            repair = len(request.messages) > 1  # slower: more often cut by a limit
            await anyio.sleep(rng.uniform(0, spec.latency_s * (4 if repair else 1)))
            reply: BaseModel | str
            if not repair and rng.random() < 0.3:
                reply = "not JSON"  # billed, then repaired: a limit may stop the repair
            elif i in plan.backs:
                decision = rng.choices(["go", f"back{i}", "stop"], [0.55, 0.35, 0.1])[0]
                reply = CHOICES[i](decision=decision, summary=f"s{i} {decision}")
            else:
                reply = Text(text=f"s{i}")
            billing.add(run, tokens)  # no await from here until the ledger books it
            return Billed(reply, input_tokens=tokens)

        return FunctionModel(answer, name=f"prop:r{i}", price=PRICE)

    return {f"r{i}": step_model(i) for i in range(plan.steps)}


def stored_at(stored: StoredMessage) -> datetime:
    assert stored.time is not None
    return datetime.fromisoformat(stored.time.replace("Z", "+00:00"))


def explained(plan: Plan, result: TaskResult, ended: datetime, deadline: datetime,
              cancelled_at: datetime | None) -> bool:
    """Whether a route, a cap, the deadline or the cancel explains how the run ended."""
    last = f"s{plan.steps - 1}"
    index = int(result.step[1:]) if result.step.startswith("s") else -1
    slack = timedelta(seconds=EARLY_S)
    match result.status:
        case "approved":
            return result.step == last
        case "failed":
            return index in plan.backs and result.reason == f"{result.step} stop"
        case "rounds_exhausted":
            cap = plan.backs[index][1] if index in plan.backs else -1
            return result.routes.get(f"back{index}", 0) == cap and f"(cap {cap})" in \
                result.reason
        case "deadline_exceeded":
            return ended >= deadline - slack
        case "cancelled":
            return cancelled_at is not None and ended >= cancelled_at - slack
    return False


@pytest.mark.timeout(300)
@settings(max_examples=18, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plans())
async def test_every_run_ends_once_explained_within_its_caps_deadline_and_spend(
    nats_url: str, plan: Plan
) -> None:
    namespace = new_namespace("p")
    billing = Billing()
    wf = workflow(plan)
    fast = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=10, max_deliver=5, concurrency=8)
    agents = team(wf, models=models(plan, billing), consumers={r: fast for r in wf.roles})
    deadlines: dict[int, datetime] = {}
    cancelled: dict[int, datetime] = {}
    results: dict[int, TaskResult] = {}
    trails: dict[int, list[StoredMessage]] = {}
    with anyio.fail_after(30):
        async with (
            Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            async def cancel(k: int, after_s: float) -> None:
                await anyio.sleep(after_s)
                cancelled[k] = datetime.now(UTC)
                await client.cancel(f"run-{k}")

            async def follow(k: int) -> None:
                results[k] = await client.result(f"run-{k}")

            async with anyio.create_task_group() as tg:
                for k, run in enumerate(plan.runs):
                    submitted = datetime.now(UTC)
                    deadlines[k] = submitted + timedelta(seconds=run.timeout_s)
                    await client.submit(TaskRequest(goal=f"run {k} of the line",
                                                    limits=Limits(timeout_s=run.timeout_s),
                                                    submitted_at=submitted),
                                        workflow_id=f"run-{k}")
                    tg.start_soon(follow, k)
                    if run.cancel_after_s is not None:
                        tg.start_soon(cancel, k, run.cancel_after_s)
            for k in results:
                trails[k] = await client.trail(f"run-{k}")
    for k, result in results.items():
        event(result.status)
        ends = [s for s in trails[k] if s.subject.endswith(".result")]
        assert len(ends) == 1, (k, result)
        assert not [s for s in trails[k] if s.subject.endswith(".deadletter")], k
        ended = stored_at(ends[0])
        assert explained(plan, result, ended, deadlines[k], cancelled.get(k)), (
            k, plan, result.status, result.step, result.reason, result.routes)
        for i, (_to, cap) in plan.backs.items():
            assert result.routes.get(f"back{i}", 0) <= cap, (k, result.routes)
        for j in range(plan.steps):
            caps = sum(cap for to, cap in plan.backs.values() if to == j)
            assert result.send_backs.get(f"r{j}", 0) <= caps, (k, result.send_backs)
        assert ended <= deadlines[k] + timedelta(seconds=LATE_S), (k, ended, deadlines[k])
        calls, tokens = billing.calls.get(k, 0), billing.tokens.get(k, 0)
        assert result.total.calls == calls, (k, result.total, calls)
        assert result.total.input_tokens == tokens, (k, result.total, tokens)
        assert result.total.cost_usd == pytest.approx(tokens / 1_000_000), k
