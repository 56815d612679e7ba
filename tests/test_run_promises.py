"""What a run promises, on a real nats-server with scripted models: it ends once, with the
status its routes, caps, deadline or a dead letter explain, with its best attempt and every
call it paid for; a workflow that would break a promise is refused before it runs.

Each test states a situation and the one right value; the names say which. Prices and
helpers: ``_run_helpers``. The guards behind these promises (the sandbox's veto, the
budget, the ledger, the cache) are tested in ``test_run_guards``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from _fault_helpers import fake_tools
from _run_helpers import (
    CALL_USD,
    EXAMPLES,
    FAST,
    billed,
    code,
    design,
    flow,
    priced_team_models,
    prompt_of,
    refused,
    run_one,
    send_back,
    stored_at,
    swarmbus_cmd,
)
from _team_helpers import GOAL, Script, path, works
from _team_helpers import team as code_review_team
from pydantic import BaseModel, Field

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel, Model, ModelConfig, ModelRequest
from swarmbus.agents.workflow import Supervisor, load_workflow, team
from swarmbus.bus import PayloadTooLargeError, SwarmClient
from swarmbus.protocols import (
    ArtifactRef,
    Finding,
    Limits,
    TaskRequest,
    TaskResult,
    Text,
    Usage,
    Verdict,
    headers,
    subject,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


# -- types a workflow names by import path ---------------------------------------------------------


class Judgement(BaseModel):
    decision: Literal["accept", "reject"]
    summary: str


class Notes(BaseModel):
    summary: str
    findings: list[str] = Field(default_factory=list)


# -- the seed example: a reviewer that never approves ----------------------------------------------


async def test_the_seed_reviewer_never_approving_ends_rounds_exhausted_and_submit_fails(
    nats_url: str, namespace: str
) -> None:
    wf = load_workflow(EXAMPLES / "seed.yaml")
    models: dict[str, FunctionModel] = {
        "google:gemini-2.5-pro": FunctionModel(design, name="google:gemini-2.5-pro"),
        "openai:gpt-4o": FunctionModel(code, name="openai:gpt-4o"),
        "anthropic:claude-sonnet-4-5": FunctionModel(send_back,
                                                     name="anthropic:claude-sonnet-4-5"),
    }

    def build(config: ModelConfig) -> Model:
        return models[str(config)]

    async with Swarm(team(wf, build=build), nats=nats_url, namespace=namespace, grace_s=3):
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [*swarmbus_cmd(), "submit", GOAL, "--json", "--nats", nats_url,
                 "--namespace", namespace], check=False)
    assert done.returncode == 1, done.stderr.decode()[-2000:]
    result = TaskResult.model_validate(
        {k: v for k, v in json.loads(done.stdout).items() if k != "workflow_id"})
    assert result.status == "rounds_exhausted", result.reason
    assert "cap 3" in result.reason  # the preset cap of revise_code
    assert result.send_backs == {"coder": 3} and result.code_revisions == 3
    assert result.routes == {"revise_code": 3}
    assert [f.location for f in result.findings] == ["gateway.py:2"]
    assert len(models["openai:gpt-4o"].requests) == 4  # the first code and three revisions
    assert len(models["anthropic:claude-sonnet-4-5"].requests) == 4


# -- routes that end a run -------------------------------------------------------------------------


async def test_a_reject_route_ending_failed_ends_the_run_failed_with_the_summary(
    nats_url: str, namespace: str
) -> None:
    wf = flow({"name": "judged",
               "artifacts": {"draft": "swarmbus.Text",
                             "judgement": "test_run_promises:Judgement"},
               "steps": [{"id": "write", "role": "writer", "output": "draft"},
                         {"id": "judge", "role": "judge", "input": "draft",
                          "output": "judgement",
                          "routes": {"accept": "end", "reject": {"end": "failed"}}}]})
    why = "the draft copies its source word for word"
    models: dict[str, Model] = {
        "writer": billed(lambda _r: Text(text="a draft"), "t:writer"),
        "judge": billed(lambda _r: Judgement(decision="reject", summary=why), "t:judge")}
    result, trail = await run_one(team(wf, models=models), nats_url, namespace,
                                  TaskRequest(goal="Write a post"))
    assert result.status == "failed"
    assert result.reason == why
    assert result.step == "judge"
    assert result.artifacts["draft"] == {"text": "a draft"}
    assert result.total.calls == 2 and result.total.cost_usd == 2 * CALL_USD
    assert path(trail) == ["task", "write", "result"]


@pytest.mark.parametrize("type_name", ["swarmbus.Verdict", "test_run_promises:Judgement"])
def test_a_route_field_without_routes_is_refused(tmp_path: Path, type_name: str) -> None:
    file = tmp_path / "unrouted.yaml"
    file.write_text(f"artifacts: {{draft: swarmbus.Text, verdict: '{type_name}'}}\n"
                    "steps:\n- {id: write, role: writer, output: draft}\n"
                    "- {id: judge, role: judge, input: draft, output: verdict}\n")
    refused(file, "steps[1].routes", "step 'judge' has no `routes`", ".decision")


def test_an_output_type_with_its_own_findings_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "notes.yaml"
    file.write_text("artifacts: {notes: 'test_run_promises:Notes'}\n"
                    "steps:\n- {id: note, role: writer, output: notes}\n")
    refused(file, "artifacts.notes", "Notes.findings", "list[swarmbus.Finding]")


# -- the deadline ----------------------------------------------------------------------------------


async def test_a_step_no_agent_serves_ends_at_the_deadline_naming_step_and_role(
    nats_url: str, namespace: str
) -> None:
    models = priced_team_models()
    submitted = datetime.now(UTC)
    task = TaskRequest(goal=GOAL, limits=Limits(timeout_s=2), submitted_at=submitted)
    started = time.monotonic()
    agents = code_review_team(models, roles=["architect"], tools=fake_tools())
    result, trail = await run_one(agents, nats_url, namespace, task, timeout_s=30)
    took = time.monotonic() - started
    assert result.status == "deadline_exceeded", result.reason
    assert "step 'implement' was waiting for the coder" in result.reason
    assert took < 10
    (ended,) = [s for s in trail if s.subject.endswith(".result")]
    assert stored_at(ended) >= submitted + timedelta(seconds=2)  # not before the deadline
    assert result.design is not None  # the best attempt
    assert result.spend["architect"].calls == 1
    assert result.total.cost_usd == CALL_USD
    assert len(models["architect"].requests) == 1


async def test_the_deadline_ends_a_run_when_no_process_was_alive_at_it(
    nats_url: str, namespace: str
) -> None:
    models = priced_team_models()
    task = TaskRequest(goal=GOAL, limits=Limits(timeout_s=2))
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
        with anyio.fail_after(30):
            async with Swarm(code_review_team(models, roles=["architect"], supervisor=False),
                             nats=nats_url, namespace=namespace, grace_s=3):
                wf = await client.submit(task)
                while await client.bus.last(wf, "step.implement") is None:
                    await anyio.sleep(0.05)
            await anyio.sleep(2.5)  # every swarm stopped; the deadline passes
            assert await client.bus.last(wf, "result") is None
            async with Swarm([Supervisor()], nats=nats_url, namespace=namespace, grace_s=3):
                result = await client.result(wf, timeout_s=15)
    assert result.status == "deadline_exceeded", result.reason
    assert "step 'implement' was waiting for the coder" in result.reason
    assert result.design is not None
    assert result.spend["architect"].calls == 1 and result.total.cost_usd == CALL_USD


# -- caps across steps: the four-role example --------------------------------------------------


def security_review(
    auditor: Callable[[int], str], reviewer: Callable[[int], str]
) -> tuple[list[Any], dict[str, FunctionModel]]:
    """The four-role example's agents on scripted models; ``auditor(n)`` and
    ``reviewer(n)`` give the decision of the n-th call (from 1)."""
    wf = load_workflow(EXAMPLES / "security-review.yaml")
    calls = {"auditor": 0, "reviewer": 0}

    def claude(request: ModelRequest[Any]) -> Verdict:
        role = "auditor" if "security auditor" in request.system else "reviewer"
        calls[role] += 1
        decision = (auditor if role == "auditor" else reviewer)(calls[role])
        if decision == "approve":
            return Verdict(decision="approve", summary=f"{role}: fine")
        return Verdict(decision="revise_code", summary=f"{role}: fix it", findings=[
            Finding(severity="major", location="gateway.py", target="coder",
                    explanation=f"{role} wants a change")])

    models = {"google:gemini-2.5-pro": billed(design, "google:gemini-2.5-pro"),
              "openai:gpt-4o": billed(code, "openai:gpt-4o"),
              "anthropic:claude-haiku-4-5": billed(claude, "anthropic:claude-haiku-4-5")}
    agents = team(wf, build=lambda c: models[str(c)], tools=fake_tools())
    return agents, models


def first_then_approve(n: int) -> str:
    return "revise_code" if n == 1 else "approve"


def always_revise(n: int) -> str:
    return "revise_code"


async def test_send_backs_to_the_coder_are_capped_across_steps(
    nats_url: str, namespace: str
) -> None:
    agents, models = security_review(first_then_approve, always_revise)
    task = TaskRequest(goal=GOAL, limits=Limits(max_code_revisions=1))
    result, trail = await run_one(agents, nats_url, namespace, task)
    assert result.status == "rounds_exhausted", result.reason
    assert "work sent back to the coder 1 times (cap 1)" in result.reason
    assert result.code_revisions == 1 and result.send_backs == {"coder": 1}
    assert len(models["openai:gpt-4o"].requests) == 2
    assert path(trail) == ["task", "design", "implement", "audit", "implement", "audit",
                           "result"]
    assert result.step == "review"


async def test_a_route_cap_counts_every_step_s_route_of_that_name(
    nats_url: str, namespace: str
) -> None:
    agents, models = security_review(first_then_approve, always_revise)
    task = TaskRequest(goal=GOAL, limits=Limits(caps={"revise_code": 1}))
    result, _ = await run_one(agents, nats_url, namespace, task)
    assert result.status == "rounds_exhausted", result.reason
    assert "route 'revise_code' taken 1 times (cap 1)" in result.reason
    assert result.routes == {"revise_code": 1, "approve": 1}
    assert len(models["openai:gpt-4o"].requests) == 2
    assert result.step == "review"


# -- dead letters ----------------------------------------------------------------------------------


async def test_work_whose_state_does_not_validate_ends_the_run_failed_keeping_its_spend(
    nats_url: str, namespace: str
) -> None:
    spent = Usage(calls=3, input_tokens=750_000, priced_cost_usd=0.75)
    state = {"task": {"goal": GOAL}, "round": "not a number",
             "spend": {"architect": spent.model_dump(mode="json")}}
    body = json.dumps({"state": state, "source": "design", "output": "design"}).encode()
    async with (
        Swarm(code_review_team(Script().models(), consumers={"coder": FAST}),
              nats=nats_url, namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        with anyio.fail_after(30):
            await client.bus.publish_raw(
                subject(namespace, "by-hand", "step.implement"), body,
                {headers.TYPE: "swarmbus.Work/1", headers.MSG_ID: "by-hand-1"})
            result = await client.result("by-hand")
            letter = await client.bus.last("by-hand", "deadletter")
    assert letter is not None
    assert result.status == "failed", result.reason
    assert re.search(r"\bcoder(@[\w-]+)? gave up on step\.implement \(invalid\)",
                     result.reason), result.reason
    assert result.spend["architect"] == spent
    assert result.total.cost_usd == pytest.approx(0.75) and result.total.calls == 3


# -- size ------------------------------------------------------------------------------------------


async def test_a_template_reads_an_artifact_stored_by_reference(
    nats_url: str, namespace: str
) -> None:
    big = "0123456789abcdef" * (200 * 1024 // 16)  # 200 KiB: over the 128 KiB inline limit
    wf = flow({"name": "quote", "artifacts": {"x": "swarmbus.Text", "y": "swarmbus.Text"},
               "steps": [{"id": "write", "role": "writer", "output": "x"},
                         {"id": "quote", "role": "quoter", "output": "y",
                          "task": "Quote this: <<{{ artifacts.x.text }}>>"}]})
    seen: list[str] = []

    def quoter(request: ModelRequest[Any]) -> Text:
        seen.append(prompt_of(request))
        return Text(text="quoted")

    models: dict[str, Model] = {"writer": FunctionModel(lambda _r: Text(text=big), name="t:w"),
                                "quoter": FunctionModel(quoter, name="t:q")}
    result, _ = await run_one(team(wf, models=models), nats_url, namespace,
                              TaskRequest(goal="Quote it"))
    assert result.status == "approved", result.reason
    assert ArtifactRef.of(result.artifacts["x"]) is not None  # it travelled by reference
    (prompt,) = seen
    assert f"<<{big}>>" in prompt
    assert "swarmbus_ref" not in prompt


async def test_nine_steps_of_120_kib_each_are_approved(nats_url: str, namespace: str) -> None:
    """Each output stays inline (under 128 KiB), but with the task's 150 KB input the
    state outgrows the stream's 1 MiB message limit after seven steps: its artifacts move
    to the object store and the run goes on."""
    n, size = 9, 120 * 1024
    wf = flow({"name": "nine", "inputs": {"doc": {"description": "the source"}},
               "artifacts": {f"a{i}": "swarmbus.Text" for i in range(n)},
               "steps": [{"id": f"s{i}", "role": "writer", "output": f"a{i}"}
                         for i in range(n)]})
    writer_calls: list[int] = []

    def writer(_r: ModelRequest[Any]) -> Text:
        writer_calls.append(1)
        return Text(text=str(len(writer_calls)) * size)

    agents = team(wf, models={"writer": FunctionModel(writer, name="t:w")})
    async with (
        Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        with anyio.fail_after(60):
            wf_id = await client.submit(TaskRequest(goal="Write nine parts",
                                                    inputs={"doc": "d" * 150_000}))
            result = await client.result(wf_id)
            texts = [await client.artifact(result, f"a{i}") for i in range(n)]
            trail = await client.trail(wf_id)
    assert result.status == "approved", result.reason
    assert result.steps == n and len(writer_calls) == n
    assert [Text.model_validate(t).text for t in texts] == [
        str(i + 1) * size for i in range(n)]
    spilled = [w for i in range(n) for w, _ in works(trail, f"s{i}")
               if any(ArtifactRef.of(v) is not None for v in w.state.artifacts.values())]
    assert spilled  # handed on by reference once the state grew too large


@pytest.mark.parametrize("where", ["inputs", "constraints"])
async def test_a_task_too_large_is_refused_before_it_is_published(
    nats_url: str, namespace: str, where: str
) -> None:
    task = (TaskRequest(goal="Summarise", inputs={"doc": "x" * 900_000}) if where == "inputs"
            else TaskRequest(goal="Summarise", constraints=["x" * 900_000]))
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
        with pytest.raises(PayloadTooLargeError, match=r"above the limit of 524,288 bytes"):
            await client.submit(task, workflow_id="big")
        assert await client.bus.history("big") == []


# -- templates -------------------------------------------------------------------------------------

_WRITING = ("inputs: {audience: {description: who reads it}}\n"
            "artifacts: {outline: swarmbus.Design, draft: swarmbus.Text, post: swarmbus.Text}\n"
            "steps:\n- {id: plan, role: planner, output: outline}\n"
            "- {id: write, role: writer, input: outline, output: draft}\n"
            "- {id: edit, role: editor, input: draft, output: post, %s}\n")
_BRANCHING = ("artifacts: {note: swarmbus.Text, out: swarmbus.Text, v: swarmbus.Verdict}\n"
              "steps:\n- {id: a, role: judge, output: v, routes: {approve: c, "
              "revise_code: b, revise_design: c}}\n"
              "- {id: b, role: writer, output: note, next: c}\n"
              "- {id: c, role: reader, output: out, %s}\n")
TEMPLATES = {
    "input misspelled": (_WRITING, "For {{ inputs.audiance }}",
                         ["{{ inputs.audiance }}", "no input 'audiance'",
                          "did you mean 'audience'?"]),
    "artifact misspelled": (_WRITING, "Follow {{ artifacts.outlne.summary }}",
                            ["{{ artifacts.outlne.summary }}", "no artifact 'outlne'",
                             "did you mean 'outline'?"]),
    "field misspelled": (_WRITING, "Edit {{ artifacts.draft.txt }}",
                         ["{{ artifacts.draft.txt }}", "Text has no field 'txt'",
                          "did you mean 'text'?"]),
    "not on every path": (_BRANCHING, "Read {{ artifacts.note.text }}",
                          ["{{ artifacts.note.text }}", "artifact 'note' is not produced on "
                           "every path to step 'c'"]),
}


@pytest.mark.parametrize("key", ["task", "prompt"])
@pytest.mark.parametrize("case", list(TEMPLATES))
def test_a_template_naming_what_does_not_exist_is_refused(
    tmp_path: Path, case: str, key: str
) -> None:
    shape, template, words = TEMPLATES[case]
    if key == "task":
        text = shape % f"task: '{template}'"
    else:
        (tmp_path / "step.md").write_text(f"You edit. {template}\n")
        text = shape % "prompt: step.md"
    file = tmp_path / "wf.yaml"
    file.write_text(text)
    refused(file, f"steps[2].{key}", *words)
