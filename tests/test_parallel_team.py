"""``builtin:code-review-parallel`` end to end on a real nats-server and the real
sandbox, with scripted models: the contract is checked before coders start, coders
build their components at once, a write outside a component's files becomes a
finding, and a finding that points at one component re-runs only that component."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel
from swarmbus.agents.workflow import load_workflow, team
from swarmbus.bus import SwarmClient
from swarmbus.protocols import (
    Code,
    ComponentPlan,
    Finding,
    ParallelDesign,
    SourceFile,
    TaskRequest,
    TaskResult,
    Verdict,
)

INTERFACE = SourceFile(path="interface.py", content=(
    "def add(a: int, b: int) -> int: ...\n\n\ndef mul(a: int, b: int) -> int: ...\n"))

ADD = [SourceFile(path="adder.py", content="def add(a: int, b: int) -> int:\n"
                  "    return a + b\n"),
       SourceFile(path="test_adder.py", content="from adder import add\n\n\n"
                  "def test_add():\n    assert add(2, 3) == 5\n")]
MUL = [SourceFile(path="multiplier.py", content="from adder import add\n\n\n"
                  "def mul(a: int, b: int) -> int:\n    out = 0\n    for _ in range(b):\n"
                  "        out = add(out, a)\n    return out\n"),
       SourceFile(path="test_multiplier.py", content="from multiplier import mul\n\n\n"
                  "def test_mul():\n    assert mul(4, 3) == 12\n")]


def design(interface: SourceFile = INTERFACE, *, one: bool = False) -> ParallelDesign:
    comps = [ComponentPlan(name="adder", responsibility="adds", files=[
        "adder.py", "test_adder.py"], provides=["add(a: int, b: int) -> int"])]
    if not one:
        comps.append(ComponentPlan(name="multiplier", responsibility="multiplies", files=[
            "multiplier.py", "test_multiplier.py"], provides=["mul(a: int, b: int) -> int"],
            depends_on=["adder"]))
    return ParallelDesign(summary="arithmetic", interface=interface, components=comps)


def text_of(request: Any) -> str:
    return str(request.system) + "\n" + "\n".join(str(m.content) for m in request.messages)


class Team:
    """Scripted architect, coders and reviewer; what each was asked is kept."""

    def __init__(self, designs: list[ParallelDesign], verdicts: list[Verdict],
                 extra: dict[str, list[SourceFile]] | None = None) -> None:
        self.designs, self.verdicts, self.extra = designs, verdicts, extra or {}
        self.asked: dict[str, list[str]] = {"architect": [], "coder": [], "reviewer": []}
        self.built: list[str] = []

    def architect(self, request: Any) -> ParallelDesign:
        self.asked["architect"].append(text_of(request))
        return self.designs[min(len(self.asked["architect"]), len(self.designs)) - 1]

    def coder(self, request: Any) -> Code:
        text = text_of(request)
        self.asked["coder"].append(text)
        if "Build component " not in text:  # the single-coder path
            self.built.append("all")
            return Code(files=[*ADD, *MUL])
        name = text.split("Build component ", 1)[1].split(":")[0]
        self.built.append(name)
        files = ADD if name == "adder" else MUL
        return Code(files=[*files, *self.extra.get(name, [])])

    def reviewer(self, request: Any) -> Verdict:
        self.asked["reviewer"].append(text_of(request))
        return self.verdicts[min(len(self.asked["reviewer"]), len(self.verdicts)) - 1]

    async def run(self, nats_url: str, namespace: str) -> TaskResult:
        wf = load_workflow("builtin:code-review-parallel")
        models = {"architect": FunctionModel(self.architect, name="t:architect"),
                  "coder": FunctionModel(self.coder, name="t:coder"),
                  "reviewer": FunctionModel(self.reviewer, name="t:reviewer")}
        with anyio.fail_after(90):
            async with (
                Swarm(team(wf, models=models), nats=nats_url, namespace=namespace,
                      grace_s=3),
                await SwarmClient.connect(nats_url, namespace=namespace) as client,
            ):
                return await client.result(await client.submit(
                    TaskRequest(goal="add and multiply integers")))


APPROVE = Verdict(decision="approve", summary="good")


@pytest.mark.anyio
async def test_coders_build_their_components_and_the_whole_suite_passes(
    nats_url: str, namespace: str
) -> None:
    t = Team([design()], [APPROVE])
    result = await t.run(nats_url, namespace)
    assert result.status == "approved", result.reason
    assert sorted(t.built) == ["adder", "multiplier"]
    assert result.code is not None
    assert sorted(f.path for f in result.code.files) == [
        "adder.py", "interface.py", "multiplier.py", "test_adder.py", "test_multiplier.py"]
    assert result.test_report is not None and result.test_report.passed == 2
    # the multiplier depends on the adder: the coder of the multiplier saw the interface
    assert "def add(a: int, b: int) -> int" in t.asked["coder"][-1]


@pytest.mark.anyio
async def test_a_signature_mismatch_goes_back_to_the_architect_before_any_coder(
    nats_url: str, namespace: str
) -> None:
    wrong = SourceFile(path="interface.py", content="def add(a: int) -> int: ...\n")
    t = Team([design(wrong), design()], [APPROVE])
    result = await t.run(nats_url, namespace)
    assert result.status == "approved", result.reason
    assert len(t.asked["architect"]) == 2
    second = t.asked["architect"][1]
    assert "the interface has add(a: int) -> int, the design says add(a: int, b: int)" in second
    assert "mul is not defined in the interface" in second
    assert sorted(t.built) == ["adder", "multiplier"]  # no coder ran on the broken contract
    assert result.send_backs.get("architect") == 1


@pytest.mark.anyio
async def test_a_write_outside_a_components_files_is_a_finding_not_an_overwrite(
    nats_url: str, namespace: str
) -> None:
    intruder = SourceFile(path="multiplier.py", content="def mul(a, b):\n    return 0\n")
    t = Team([design()], [APPROVE], extra={"adder": [intruder]})
    result = await t.run(nats_url, namespace)
    assert result.status == "approved", result.reason
    assert result.code is not None
    mul = next(f for f in result.code.files if f.path == "multiplier.py")
    assert "for _ in range(b)" in mul.content  # the owner's file, not the intruder's
    assert "component adder wrote multiplier.py, which is component multiplier's file" \
        in t.asked["reviewer"][0]


@pytest.mark.anyio
async def test_a_finding_about_one_component_rebuilds_only_that_component(
    nats_url: str, namespace: str
) -> None:
    revise = Verdict(decision="revise_code", summary="mul is slow", findings=[
        Finding(severity="minor", location="multiplier.py:4", target="coder",
                explanation="use the * operator")])
    t = Team([design()], [revise, APPROVE])
    result = await t.run(nats_url, namespace)
    assert result.status == "approved", result.reason
    assert sorted(t.built) == ["adder", "multiplier", "multiplier"]
    assert "use the * operator" in t.asked["coder"][-1]
    items: Any = result.artifacts["part"]
    reused = {i["key"]: i["reused"] for i in items["items"]}
    assert reused == {"adder": True, "multiplier": False}
    assert result.code_revisions == 1


@pytest.mark.anyio
async def test_a_design_of_one_component_takes_the_single_coder_path(
    nats_url: str, namespace: str
) -> None:
    t = Team([design(one=True)], [APPROVE])
    result = await t.run(nats_url, namespace)
    assert result.status == "approved", result.reason
    assert t.built == ["all"]
    assert result.routes.get("single") == 1


@pytest.mark.anyio
async def test_the_offline_models_run_the_parallel_team(nats_url: str, namespace: str) -> None:
    """`swarmbus up --offline --workflow builtin:code-review-parallel` works: the
    scripted architect answers a parallel design, each coder its component."""
    from swarmbus.agents.app import offline_models

    wf = load_workflow("builtin:code-review-parallel")
    models = offline_models()
    with anyio.fail_after(90):
        async with (
            Swarm(team(wf, models=models), nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            result = await client.result(await client.submit(TaskRequest(goal="say hello")))
    assert result.status == "approved", result.reason
    assert result.routes.get("parallel") == 1
    assert result.test_report is not None and result.test_report.passed == 2
    assert result.spend["coder"].calls == 2
