"""Route values typed by their field (a bool, an Enum, a Literal), a route field that is
not a fixed set refused, a generic verdict for workflows that are not about code, and a
template that fails at run time ending the run at its first delivery."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

import anyio
import pytest
from pydantic import BaseModel

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel
from swarmbus.agents.workflow import compile_workflow, team
from swarmbus.bus import ConsumerSettings, SwarmClient
from swarmbus.protocols import (
    Review,
    TaskRequest,
    Text,
    Workflow,
    WorkflowError,
    data_type,
    route_values,
)


@data_type("tests.Check")
class Check(BaseModel):
    passed: bool
    summary: str = ""


class Mood(Enum):
    GOOD = "good"
    BAD = "bad"


@data_type("tests.Feel")
class Feel(BaseModel):
    mood: Mood
    summary: str = ""


@data_type("tests.FreeText")
class FreeText(BaseModel):
    decision: str


@data_type("tests.Pick")
class Pick(BaseModel):
    decision: Literal["keep", 1, True]


def wf(out: str, routes: dict[str, Any], *, route_on: str = "decision",
       task: str = "") -> dict[str, Any]:
    return {"name": "t", "artifacts": {"draft": "swarmbus.Text", "out": out},
            "steps": [{"id": "write", "role": "writer", "output": "draft", "task": task},
                      {"id": "judge", "role": "judge", "input": "draft", "output": "out",
                       "route_on": route_on, "routes": routes}]}


def test_route_values_of_every_fixed_field_type() -> None:
    assert route_values(Check, "passed") == ["true", "false"]
    assert route_values(Feel, "mood") == ["good", "bad"]
    assert route_values(Pick, "decision") == ["keep", "1", "true"]
    assert route_values(FreeText, "decision") is None


@pytest.mark.parametrize(("out", "route_on", "routes", "words"), [
    ("tests.Check", "passed", {"true": "end"}, "no route for passed = false"),
    ("tests.Check", "passed", {"True": "end", "false": "end"}, "never 'True'"),
    ("tests.Feel", "mood", {"good": "end"}, "no route for mood = bad"),
    ("tests.Feel", "mood", {"GOOD": "end", "bad": "end"}, "never 'GOOD'"),
    ("tests.FreeText", "decision", {"approve": "end"}, "not a fixed set of values"),
])
def test_a_route_field_is_checked_by_its_values(
    out: str, route_on: str, routes: dict[str, Any], words: str
) -> None:
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(Workflow.parse(wf(out, routes, route_on=route_on)))
    assert any(words in p.message for p in caught.value.problems), caught.value.problems


async def run(spec: dict[str, Any], answer: Any, nats_url: str, namespace: str,
              **kw: Any) -> Any:
    compiled = compile_workflow(Workflow.parse(spec))
    models = {"writer": FunctionModel(lambda r: Text(text="a draft"), name="t:writer"),
              "judge": FunctionModel(lambda r: answer, name="t:judge")}
    async with (
        Swarm(team(compiled, models=models, tools={}, **kw), nats=nats_url,
              namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        wf_id = await client.submit(TaskRequest(goal="write"))
        return await client.result(wf_id)


@pytest.mark.anyio
@pytest.mark.parametrize(("out", "route_on", "answer"), [
    ("tests.Check", "passed", Check(passed=True, summary="ok")),
    ("tests.Feel", "mood", Feel(mood=Mood.GOOD, summary="ok")),
    ("swarmbus.Review", "decision", Review(decision="approve", summary="ok")),
])
async def test_a_typed_value_takes_its_route(
    out: str, route_on: str, answer: Any, nats_url: str, namespace: str
) -> None:
    values = {"tests.Check": ("true", "false"), "tests.Feel": ("good", "bad"),
              "swarmbus.Review": ("approve", "revise")}[out]
    routes = {values[0]: "end", values[1]: {"to": "write", "max": 1}}
    with anyio.fail_after(30):
        result = await run(wf(out, routes, route_on=route_on), answer, nats_url, namespace)
    assert result.status == "approved", result.reason


@pytest.mark.anyio
async def test_a_template_failing_at_run_time_ends_the_run_at_its_first_delivery(
    nats_url: str, namespace: str
) -> None:
    """Checked at load (it names nothing unknown), it fails when rendered, every time:
    the run ends `failed` with the reason at once, not after five deliveries."""
    spec = wf("swarmbus.Review", {"approve": "end", "revise": {"to": "write", "max": 1}},
              task="Write {{ 1 // 0 }} words")
    slow = ConsumerSettings(retry_delay_s=5, max_deliver=5)
    with anyio.fail_after(20):
        result = await run(spec, Review(decision="approve", summary="ok"), nats_url, namespace,
                           consumers={"writer": slow})
    assert result.status == "failed"
    assert "prompt template" in result.reason and "ZeroDivisionError" in result.reason
    assert not result.retryable


def test_review_is_a_verdict_for_any_work() -> None:
    assert route_values(Review, "decision") == ["approve", "revise"]
    Review.model_validate({"decision": "revise", "summary": "too long", "findings": [
        {"severity": "minor", "explanation": "cut it", "target": "writer"}]})


@pytest.mark.parametrize(("template", "words"), [
    ("{{ inputs.goal.bar }}", "inputs.goal is text: it has no 'bar'"),
    ("{{ round.x }}", "round is a plain value: it has no 'x'"),
    ("{{ findings.y }}", "findings is a list of findings: it has no 'y'"),
    ("{{ artifacts.draft.text.foo }}", "draft.text is not an object with fields"),
    ("{{ role | nosuchfilter }}", "No filter named 'nosuchfilter'"),
])
def test_a_template_reading_past_a_plain_value_or_an_unknown_filter_is_refused(
    template: str, words: str
) -> None:
    spec = wf("swarmbus.Review", {"approve": "end", "revise": {"to": "write", "max": 1}})
    spec["steps"][1]["task"] = template
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(Workflow.parse(spec))
    assert any(words in p.message and p.path == "steps[1].task"
               for p in caught.value.problems), caught.value.problems


def test_the_seed_reviewer_runs_the_tests_and_cannot_approve_failing_ones() -> None:
    """The short form's reviewer gets the built-in reviewer's prompt (which says it sees
    the tests run) and its sandbox tool, so an approve of failing code is vetoed."""
    from pathlib import Path

    from swarmbus.agents.workflow import SandboxPytest, StepCall, load_workflow
    from swarmbus.protocols import Code, SourceFile, TestReport, Verdict, WorkState

    seed = load_workflow(Path(__file__).parent.parent / "examples/workflows/seed.yaml")
    reviewer = seed.steps["reviewer"]
    assert reviewer.tool_names == ["sandbox.pytest"]
    assert "sandbox" in (reviewer.system or "")
    call = StepCall(workflow=seed, step=reviewer, state=WorkState(
        task=TaskRequest(goal="x"), test_report=TestReport(exit_code=1, passed=1, failed=1)),
        inputs={"code": Code(files=[SourceFile(path="a.py", content="")])}, previous=None,
        output_type=Verdict, model=None, settings=None, ctx=None)  # type: ignore[arg-type]
    out = SandboxPytest(None).after(  # type: ignore[arg-type]
        call, Verdict(decision="approve", summary="looks fine"))
    assert isinstance(out, Verdict) and out.decision == "revise_code"


def test_two_runs_of_the_same_failing_code_read_the_same() -> None:
    """What pytest prints differently on each run of the same code (memory addresses,
    temporary folders, epoch times) does not reach the prompt: a redelivered review of
    failing code is the same request, served from the response cache."""
    from swarmbus.agents.workflow import report_text
    from swarmbus.protocols import TestReport

    def run(addr: str, tmp: str, now: str) -> TestReport:
        return TestReport(exit_code=1, passed=0, failed=3, failed_tests=[
            f"test_m.py::test_a - assert <m.A object at 0x{addr}> == <m.A obje..."],
            output=(f"E       assert <m.A object at 0x{addr}> == <m.A object at 0x{addr}>\n"
                    f"E       AssertionError: /box/tmp/{tmp}\n"
                    f"E       AssertionError: assert {now} < 0\n"
                    "3 failed in 0.12s\n"))

    first = report_text(run("7f943a2d80d0", "tmp5pzcs0l1", "1796680086.6806178"))
    second = report_text(run("7fc63d518fd0", "tmp08_qppx8", "1796680086.9021063"))
    assert first == second
    assert "<m.A object at 0x…>" in first and "/box/tmp/tmp…" in first
    assert "assert <time> < 0" in first
