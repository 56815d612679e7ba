"""The example workflows run end to end on a real nats-server, offline (scripted models):
the seed example as written, the four-role example with its security auditor sending the
code back once, and a step served by a user's own agent class bound by import path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from _team_helpers import path, works

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel, Model, ModelConfig, ModelRequest
from swarmbus.agents.workflow import (
    SandboxPytest,
    StepAgent,
    StepCall,
    compile_workflow,
    load_workflow,
    team,
)
from swarmbus.bus import SwarmClient, UnknownWorkflowError
from swarmbus.protocols import (
    Code,
    Component,
    ConfigError,
    Design,
    Finding,
    SourceFile,
    TaskRequest,
    TaskResult,
    TestReport,
    Verdict,
    Workflow,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "workflows"
GOAL = "Write charge(amount) for a PaymentGateway, with tests"
SAFE = ("def charge(amount):\n    if amount <= 0:\n        raise ValueError(amount)\n"
        "    return amount\n")
UNSAFE = "def charge(amount):\n    return eval(str(amount))\n"
TEST = "from gateway import charge\n\n\ndef test_charge():\n    assert charge(5) == 5\n"


def prompt(request: ModelRequest[Any]) -> str:
    return request.system + "\n" + "\n".join(m.content for m in request.messages)


def design(_r: ModelRequest[Any]) -> Design:
    return Design(summary="PaymentGateway.charge(amount) validates and returns the amount",
                  components=[Component(name="charge", responsibility="charges")],
                  interfaces=["charge(amount: int) -> int"], files=["gateway.py"])


def code(request: ModelRequest[Any]) -> Code:
    fixed = "## Findings to address" in prompt(request)
    return Code(files=[SourceFile(path="gateway.py", content=SAFE if fixed else UNSAFE),
                       SourceFile(path="test_gateway.py", content=TEST)])


def audit(request: ModelRequest[Any]) -> Verdict:
    current = prompt(request).split("## Current code", 1)[1].split("\n## ", 1)[0]
    if "eval(" in current:
        return Verdict(decision="revise_code", summary="eval on input", findings=[
            Finding(severity="critical", location="gateway.py:2", target="coder",
                    explanation="eval() on a caller's value: validate the number instead")])
    return Verdict(decision="approve", summary="no security problem")


def review(request: ModelRequest[Any]) -> Verdict:
    return Verdict(decision="approve", summary="correct and defensive")


def scripted(fn: Any, name: str) -> FunctionModel:
    return FunctionModel(fn, name=name)


async def run(agents: list[Any], nats_url: str, namespace: str) -> tuple[TaskResult, list[Any]]:
    async with (
        Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        with anyio.fail_after(40):
            wf = await client.submit(TaskRequest(goal=GOAL))
            result = await client.result(wf)
            return result, await client.trail(wf)


async def test_the_seed_example_runs_as_written(nats_url: str, namespace: str) -> None:
    wf = load_workflow(EXAMPLES / "seed.yaml")
    by_name: dict[str, Model] = {
        "google:gemini-2.5-pro": scripted(design, "google:gemini-2.5-pro"),
        "openai:gpt-4o": scripted(code, "openai:gpt-4o"),
        "anthropic:claude-sonnet-4-5": scripted(review, "anthropic:claude-sonnet-4-5"),
    }

    def build(config: ModelConfig) -> Model:  # stands in for the real SDKs, by model name
        assert isinstance(config, str)
        return by_name[config]

    result, trail = await run(team(wf, build=build), nats_url, namespace)
    assert result.status == "approved", result.reason
    assert path(trail) == ["task", "architect", "coder", "result"]
    spec = Design.model_validate(result.artifacts["architecture_spec"])
    assert spec.summary.startswith("PaymentGateway")
    assert Code.model_validate(result.artifacts["code"]).files[0].content == UNSAFE
    assert [m.provenance.name for m, _ in (*works(trail, "architect"), *works(trail, "coder"))
            if m.provenance] == ["google:gemini-2.5-pro", "openai:gpt-4o"]
    assert result.provenance is not None
    assert result.provenance.name == "anthropic:claude-sonnet-4-5"
    architect = by_name["google:gemini-2.5-pro"]
    assert isinstance(architect, FunctionModel)
    (request,) = architect.requests
    assert "Design the class structure for a payment processing system" in prompt(request)


async def test_the_four_role_example_sends_back_through_the_auditor(
    nats_url: str, namespace: str
) -> None:
    wf = load_workflow(EXAMPLES / "security-review.yaml")

    def claude(request: ModelRequest[Any]) -> Verdict:  # one model, two roles' prompts
        return audit(request) if "security auditor" in request.system else review(request)

    fns = {"google:gemini-2.5-pro": design, "openai:gpt-4o": code,
           "anthropic:claude-haiku-4-5": claude}

    def build(config: ModelConfig) -> Model:
        assert isinstance(config, str)
        return scripted(fns[config], config)

    result, trail = await run(team(wf, build=build), nats_url, namespace)
    assert result.status == "approved", result.reason
    assert path(trail) == ["task", "design", "implement", "audit", "implement", "audit",
                           "result"]
    (back, _), _ = works(trail, "audit")
    assert back.edge == "audit.revise_code"
    assert [f.location for f in back.state.findings] == ["gateway.py:2"]
    assert result.routes == {"revise_code": 1, "approve": 1}
    assert Code.model_validate(result.artifacts["code"]).files[0].content == SAFE
    assert result.test_report is not None and result.test_report.ok  # the real sandbox
    assert set(result.spend) == {"architect", "coder", "auditor", "reviewer"}


class KeywordAuditor(StepAgent):
    """A user's own code serving a step (no model): rejects code that calls eval."""

    async def perform(self, call: StepCall) -> Verdict:
        code = call.inputs["code"]
        assert isinstance(code, Code)
        bad = [f.path for f in code.files if "eval(" in f.content]
        if bad:
            return Verdict(decision="revise_code", summary="eval found", findings=[
                Finding(severity="critical", location=p, target="coder",
                        explanation="do not eval input") for p in bad])
        return Verdict(decision="approve", summary="no eval")


async def test_a_step_bound_to_your_own_agent_class(nats_url: str, namespace: str) -> None:
    spec = Workflow.parse({
        "name": "own-auditor", "artifacts": {"audit": "swarmbus.Verdict"},
        "steps": [
            {"role": "architect"},
            {"role": "coder", "input": "design"},
            {"id": "audit", "role": "auditor", "agent": "test_workflow_examples:KeywordAuditor",
             "input": "code", "output": "audit",
             "routes": {"approve": "end", "revise_code": {"to": "coder", "max": 2},
                        "revise_design": "end"}},
        ]})
    wf = compile_workflow(spec)
    models: dict[str, Model] = {"architect": scripted(design, "t:architect"),
                                "coder": scripted(code, "t:coder")}

    async def never(files: Sequence[SourceFile]) -> TestReport:
        raise AssertionError("no step of this workflow runs tests")

    agents = team(wf, models=models, tools={"sandbox.pytest": SandboxPytest(never)})
    assert [type(a).__name__ for a in agents] == [
        "StepAgent", "StepAgent", "KeywordAuditor", "Supervisor"]
    result, trail = await run(agents, nats_url, namespace)
    assert result.status == "approved", result.reason
    assert path(trail) == ["task", "architect", "coder", "audit", "coder", "result"]
    assert result.spend["auditor"].calls == 0  # its own code, no model


async def test_a_task_for_a_workflow_or_inputs_the_namespace_lacks_is_refused_at_submit(
    nats_url: str, namespace: str
) -> None:
    """Nothing is published: the mistake is said at once, not as a failed run later."""
    wf = load_workflow(EXAMPLES / "seed.yaml")
    async with (
        Swarm(team(wf, build=lambda c: scripted(review, str(c))), nats=nats_url,
              namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        with pytest.raises(UnknownWorkflowError, match=r"'nosuch' is not stored .* holds seed"):
            await client.submit(TaskRequest(goal=GOAL, workflow="nosuch"), workflow_id="w1")
        with pytest.raises(ConfigError, match=r"workflow 'seed' has no input 'ticket'"):
            await client.submit(TaskRequest(goal=GOAL, inputs={"ticket": "T-1"}),
                                workflow_id="w2")
        for wf_id in ("w1", "w2"):
            assert await client.bus.first(wf_id, "task") is None
