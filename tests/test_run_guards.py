"""The guards a run's promises rest on, each with a test that fails when it breaks: the
sandbox tool's veto (generic: whatever the approving route is called), a budget spent
exactly, billed calls kept by steps that fail or are stopped, ``Ledger.take`` and
``Run.take_spend`` never booking a call twice, the response cache's key, work dead-lettered
by its role agent, and a prompt file's template names checked at load.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from _fault_helpers import fake_tools
from _run_helpers import (
    CALL_USD,
    FAST,
    PRICE,
    billed,
    flow,
    priced_team_models,
    prompt_of,
    refused,
    run_one,
)
from _team_helpers import GOAL, Script, works
from _team_helpers import team as code_review_team
from pydantic import BaseModel, Field

from swarmbus.agents import Swarm
from swarmbus.agents.models import (
    Billed,
    CachedModel,
    ChatMessage,
    FunctionModel,
    Ledger,
    LimitReached,
    MemoryStore,
    ModelRequest,
    Reply,
    metered,
)
from swarmbus.agents.workflow import SandboxPytest, StepAgent, StepCall, team
from swarmbus.bus import SwarmClient
from swarmbus.protocols import (
    Code,
    Finding,
    Limits,
    Provenance,
    SourceFile,
    TaskRequest,
    TaskResult,
    TestReport,
    Text,
    Usage,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


class Ship(BaseModel):
    """A checker's answer whose approving route is not called ``approve``."""

    decision: Literal["ship", "fix"]
    summary: str
    findings: list[Finding] = Field(default_factory=list)


# -- the sandbox's veto ----------------------------------------------------------------------------

PASSING = TestReport(passed=3, exit_code=0)
VETOED = {
    "errors": TestReport(passed=3, errors=1, exit_code=0),
    "collected_nothing": TestReport(passed=0, exit_code=5),
    "none_passed": TestReport(passed=0, exit_code=0),
    "exit_nonzero": TestReport(passed=3, exit_code=1),
    "timed_out": TestReport(passed=3, exit_code=0, timed_out=True, limits_hit=["timeout"]),
    "acceptance_fails": PASSING,
}
ACCEPTED = TestReport(kind="acceptance", passed=2, exit_code=0, token_verified=True,
                      self_reported=False)
REJECTED = TestReport(kind="acceptance", passed=1, failed=1, exit_code=1, token_verified=True,
                      self_reported=False)
SHIP = {"name": "ship-it", "artifacts": {"code": "swarmbus.Code",
                                         "check": "test_run_guards:Ship"},
        "steps": [{"id": "implement", "role": "coder", "output": "code"},
                  {"id": "check", "role": "checker", "input": "code", "output": "check",
                   "tools": ["sandbox.pytest"],
                   "routes": {"ship": "end", "fix": {"to": "implement", "max": 2}}}]}


def case_of(files: Sequence[SourceFile]) -> str:
    return files[0].content.split(":", 1)[1].strip()


async def reports(files: Sequence[SourceFile]) -> TestReport:
    case = case_of(files)
    return PASSING if case == "pass" else VETOED[case]


async def acceptance(files: Sequence[SourceFile], tests: Sequence[SourceFile]) -> TestReport:
    return REJECTED if case_of(files) == "acceptance_fails" else ACCEPTED


def coder_for_case(request: ModelRequest[Any]) -> Code:
    case = re.search(r"for case (\w+)", prompt_of(request))
    assert case is not None
    return Code(files=[SourceFile(path="m.py", content=f"# case: {case[1]}\n"),
                       SourceFile(path="test_m.py", content="def test_m():\n    pass\n")])


@pytest.mark.parametrize("kind", ["approve", "ship"])
async def test_the_sandbox_vetoes_an_approving_answer_whatever_the_route_is_called(
    nats_url: str, namespace: str, kind: str
) -> None:
    coder = FunctionModel(coder_for_case, name="t:coder")
    tools = {"sandbox.pytest": SandboxPytest(reports, acceptance=acceptance)}
    if kind == "approve":  # the built-in team, its reviewer approving anything
        models = Script(honest_reviewer=False).models()
        agents = code_review_team({**models, "coder": coder}, tools=tools)
        limits, cap = Limits(max_code_revisions=1), 1
    else:
        ship = FunctionModel(lambda _r: Ship(decision="ship", summary="ship it"), name="t:c")
        agents = team(flow(SHIP), models={"coder": coder, "checker": ship}, tools=tools)
        limits, cap = Limits(), 2
    hidden = [SourceFile(path="test_hidden.py", content="def test_h():\n    pass\n")]
    results: dict[str, TaskResult] = {}
    async with (
        Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        with anyio.fail_after(60):
            for case in ["pass", *VETOED]:
                await client.submit(TaskRequest(goal=f"Write m.py for case {case}",
                                                limits=limits, acceptance_tests=hidden),
                                    workflow_id=case)
            for case in ["pass", *VETOED]:
                results[case] = await client.result(case)
    assert results["pass"].status == "approved", results["pass"].reason
    for case in VETOED:
        r = results[case]
        assert r.status == "rounds_exhausted", (case, r.status, r.reason)
        assert r.send_backs == {"coder": cap}, case
        where = "acceptance tests" if case == "acceptance_fails" else "tests"
        assert any(f.location == where and f.target == "coder" and f.severity == "critical"
                   for f in r.findings), (case, r.findings)


# -- money -----------------------------------------------------------------------------------------


def paid(cost_usd: float) -> Provenance:
    return Provenance(provider="t", model="m", input_tokens=1, cost_usd=cost_usd, latency_s=0.0,
                      request_hash="h")


@pytest.mark.parametrize(("budget", "spent"), [(0.0, []), (0.5, [0.25, 0.25]), (0.5, [0.5])])
def test_a_budget_spent_exactly_allows_no_further_call(budget: float, spent: list[float]) -> None:
    ledger = Ledger(budget_usd=budget)
    for cost in spent:
        ledger.before_call("t:m")
        ledger.record(paid(cost))
    with pytest.raises(LimitReached) as caught:
        ledger.before_call("t:m")
    assert caught.value.status == "budget_exceeded"


@pytest.mark.parametrize(("budget", "calls", "unpriced"), [
    (0.0, 0, None), (0.0, 0, "architect"), (0.5, 2, None), (0.5, 2, "reviewer")])
async def test_a_run_whose_budget_is_spent_exactly_makes_no_further_paid_call(
    nats_url: str, namespace: str, budget: float, calls: int, unpriced: str | None
) -> None:
    """An unpriced model's call may cost anything: at a budget spent exactly it is not
    made either (a priced one is also stopped by its own worst case)."""
    models = priced_team_models()
    if unpriced is not None:
        models[unpriced].price = "unpriced"
    task = TaskRequest(goal=GOAL, limits=Limits(budget_usd=budget))
    result, _ = await run_one(code_review_team(models, tools=fake_tools()), nats_url,
                              namespace, task)
    assert result.status == "budget_exceeded", result.reason
    made = sum(len(m.requests) for m in models.values())
    assert made == calls
    assert result.total.calls == calls and result.total.cost_usd == calls * CALL_USD
    assert len(models["reviewer"].requests) == 0


async def test_a_step_failing_for_good_keeps_its_billed_calls(
    nats_url: str, namespace: str
) -> None:
    models = priced_team_models()
    models["coder"] = billed(lambda _r: "this is not JSON", "t:coder")
    result, _ = await run_one(code_review_team(models, consumers={"coder": FAST}), nats_url,
                              namespace, TaskRequest(goal=GOAL))
    assert result.status == "failed", result.reason
    assert "after one repair attempt" in result.reason
    assert result.spend["coder"].calls == 2  # the answer and its repair, both billed
    assert result.spend["coder"].cost_usd == 2 * CALL_USD
    assert result.total.cost_usd == 3 * CALL_USD


async def test_a_handler_a_budget_stops_keeps_its_billed_calls(
    nats_url: str, namespace: str
) -> None:
    models = priced_team_models()
    models["coder"] = billed(lambda _r: "not JSON: the repair is over budget", "t:coder")
    task = TaskRequest(goal=GOAL, limits=Limits(budget_usd=2 * CALL_USD))
    result, _ = await run_one(code_review_team(models), nats_url, namespace, task)
    assert result.status == "budget_exceeded", result.reason
    assert len(models["coder"].requests) == 1
    assert result.spend["coder"].calls == 1 and result.spend["coder"].cost_usd == CALL_USD
    assert result.total.cost_usd == 2 * CALL_USD


async def test_a_handler_the_deadline_stops_keeps_its_billed_calls(
    nats_url: str, namespace: str
) -> None:
    answered: list[int] = []

    async def slow_repair(request: ModelRequest[Any]) -> Reply:
        answered.append(1)
        if len(answered) > 1:
            await anyio.sleep(30)  # the repair outlasts the deadline: cut, never billed
        return Billed("not JSON", input_tokens=250_000)

    models = priced_team_models()
    models["coder"] = FunctionModel(slow_repair, name="t:coder", price=PRICE)
    task = TaskRequest(goal=GOAL, limits=Limits(timeout_s=2))
    result, _ = await run_one(code_review_team(models), nats_url, namespace, task)
    assert result.status == "deadline_exceeded", result.reason
    assert len(answered) == 2
    assert result.spend["coder"].calls == 1 and result.spend["coder"].cost_usd == CALL_USD
    assert result.total.cost_usd == 2 * CALL_USD


def test_ledger_take_never_gives_a_call_twice() -> None:
    carried = Usage(calls=1, priced_cost_usd=0.5)
    ledger = Ledger(carried=carried)
    ledger.record(paid(0.25))
    first = ledger.take()
    assert (first.calls, first.priced_cost_usd) == (2, 0.75)  # carried, then the call
    assert ledger.take() == Usage()
    ledger.record(paid(0.125))
    assert ledger.take().priced_cost_usd == 0.125
    assert ledger.take() == Usage()
    assert ledger.usage.priced_cost_usd == 0.875 and ledger.usage.calls == 3


class TakesTwice(StepAgent):
    """Takes its run's spend twice after its model answered, as a custom step may."""

    taken: list[Usage] = []

    async def perform(self, call: StepCall) -> BaseModel:
        output = await call.ask()
        run = call.ctx.run
        assert run is not None
        TakesTwice.taken += [run.take_spend(), run.take_spend()]
        return output


async def test_run_take_spend_twice_never_books_a_call_twice(
    nats_url: str, namespace: str
) -> None:
    TakesTwice.taken = []
    agents = code_review_team(priced_team_models(), tools=fake_tools(),
                              classes={"coder": TakesTwice, "reviewer": TakesTwice})
    result, _ = await run_one(agents, nats_url, namespace, TaskRequest(goal=GOAL))
    assert result.status == "approved", result.reason
    assert [u.calls for u in TakesTwice.taken] == [1, 0, 1, 0]
    assert {r: u.calls for r, u in result.spend.items()} == {
        "architect": 1, "coder": 1, "reviewer": 1}
    assert result.total.cost_usd == 3 * CALL_USD
    assert result.usage is not None and result.usage.calls == 1  # the ending step's own


async def test_a_step_that_took_its_spend_itself_still_shows_it_in_the_trail(
    nats_url: str, namespace: str
) -> None:
    """The trail adds up (each step's ``Work.usage``, then the result's ``usage``) also when
    a custom step took its run's spend before the runtime did."""
    TakesTwice.taken = []
    agents = code_review_team(priced_team_models(), tools=fake_tools(),
                              classes={"coder": TakesTwice})
    result, trail = await run_one(agents, nats_url, namespace, TaskRequest(goal=GOAL))
    assert result.status == "approved", result.reason
    (implement, _), = works(trail, "implement")
    assert implement.usage is not None and implement.usage.calls == 1, implement.usage


async def test_the_response_cache_key_covers_the_system_prompt() -> None:
    inner = FunctionModel(lambda r: Text(text=r.system), name="t:m")
    cached = CachedModel(inner, MemoryStore())
    user = (ChatMessage(role="user", content="same"),)
    a = ModelRequest(system="You are terse.", messages=user, output_type=Text)
    b = ModelRequest(system="You are verbose.", messages=user, output_type=Text)
    with metered(Ledger(scope="wf")):
        assert cached.key(a) != cached.key(b)
        first = await cached.complete(a)
        second = await cached.complete(b)
    assert (first.output.text, second.output.text) == ("You are terse.", "You are verbose.")
    assert len(inner.requests) == 2 and cached.hits == 0


# -- dead letters, prompts -------------------------------------------------------------------------


class Exploding(StepAgent):
    """A role agent whose every delivery raises (a bug in its own code)."""

    tries = 0

    async def perform(self, call: StepCall) -> BaseModel:
        Exploding.tries += 1
        raise RuntimeError("a bug in the agent")


async def test_work_a_role_agent_gave_up_on_ends_the_run_failed(
    nats_url: str, namespace: str
) -> None:
    Exploding.tries = 0
    agents = code_review_team(Script().models(), consumers={"coder": FAST},
                              classes={"coder": Exploding})
    result, trail = await run_one(agents, nats_url, namespace, TaskRequest(goal=GOAL))
    assert result.status == "failed", result.reason
    assert re.search(r"\bcoder(@[\w-]+)? gave up on step\.implement \(max_deliveries\)",
                     result.reason), result.reason
    assert "RuntimeError: a bug in the agent" in result.reason  # its last error
    assert Exploding.tries == FAST.max_deliver
    assert result.design is not None  # the best attempt
    assert sum(1 for s in trail if s.subject.endswith(".result")) == 1


def test_an_unknown_name_in_a_prompt_file_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "coder.md").write_text("You are the {{ rolee }} of the team.\n")
    file = tmp_path / "wf.yaml"
    file.write_text("steps:\n- {id: implement, role: coder, prompt: coder.md}\n")
    refused(file, "steps[0].prompt", "unknown template names ['rolee']")
