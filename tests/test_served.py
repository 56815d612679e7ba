"""What is declared is served as written: two workflows side by side in one namespace
(a role and a step id in common), a run finishing by the graph it started on after
the daemon changed its workflow (a renamed step), in a rolling upgrade too, and a
namespace default that changes only when asked."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel, Model, ModelRequest
from swarmbus.agents.workflow import compile_workflow, team
from swarmbus.bus import SwarmClient, WorkflowStore
from swarmbus.protocols import CompiledWorkflow, TaskRequest, Text, Verdict, Workflow

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def workflow(name: str, middle: str, *, writer: str = "writer") -> CompiledWorkflow:
    """``plan`` (a planner) -> ``middle`` (a writer, any step id) -> ``review`` (a
    reviewer that approves)."""
    return compile_workflow(Workflow.parse({
        "name": name,
        "artifacts": {"plan": "swarmbus.Text", "draft": "swarmbus.Text",
                      "verdict": "swarmbus.Verdict"},
        "steps": [
            {"id": "plan", "role": "planner", "output": "plan"},
            {"id": middle, "role": writer, "input": "plan", "output": "draft"},
            {"id": "review", "role": "reviewer", "input": "draft", "output": "verdict",
             "routes": {"approve": "end", "revise_code": {"to": middle, "max": 1},
                        "revise_design": {"to": middle, "max": 1}}},
        ]}))


class Seen:
    """Models that say who answered: each records (model name, workflow id)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def model(self, name: str, answer: Any) -> Model:
        def reply(request: ModelRequest[Any]) -> Any:
            goal = request.messages[0].content.split("## Goal\n\n", 1)[1].split("\n", 1)[0]
            self.calls.append((name, goal))
            return answer

        return FunctionModel(reply, name=f"t:{name}")

    def team(self, wf: CompiledWorkflow, tag: str, **kw: Any) -> list[Any]:
        models = {"writer": self.model(f"{tag}-writer", Text(text="a draft")),
                  "author": self.model(f"{tag}-author", Text(text="a draft")),
                  "planner": self.model(f"{tag}-planner", Text(text="a plan")),
                  "reviewer": self.model(f"{tag}-reviewer",
                                         Verdict(decision="approve", summary="fine"))}
        return team(wf, models={r: m for r, m in models.items() if r in wf.roles},
                    tools={}, **kw)


async def test_two_workflows_with_a_role_and_a_step_in_common_run_side_by_side(
    nats_url: str, namespace: str
) -> None:
    a = workflow("essay", "write")
    b = workflow("report", "write", writer="author")
    seen = Seen()
    with anyio.fail_after(40):
        async with (
            Swarm(seen.team(a, "A"), nats=nats_url, namespace=namespace, grace_s=3),
            Swarm(seen.team(b, "B", supervisor=False), nats=nats_url, namespace=namespace,
                  grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            ids = {}
            for i in range(6):
                wf = "essay" if i % 2 else "report"
                ids[f"g{i}"] = wf
                await client.submit(TaskRequest(goal=f"g{i}", workflow=wf), workflow_id=f"g{i}")
            results = {g: await client.result(g) for g in ids}
            store = await WorkflowStore.open(client.bus)
            default = await store.resolve(None)

    assert all(r.status == "approved" for r in results.values()), results
    # every step of each run was served by its own workflow's daemon, never the other's
    for name, goal in seen.calls:
        assert name.startswith("A-" if ids[goal] == "essay" else "B-"), (name, goal)
    assert len(seen.calls) == 18
    # the first daemon made its workflow the default; the second did not take it over
    assert default == a.hash


async def test_a_run_finishes_by_its_own_graph_after_a_step_was_renamed(
    nats_url: str, namespace: str
) -> None:
    old, new = workflow("essay", "write"), workflow("essay", "draft")
    assert old.hash != new.hash and "step.write" not in new.topics("writer")
    seen = Seen()
    with anyio.fail_after(40):
        async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
            # The old daemon runs no writer: the run waits on step.write.
            async with Swarm(seen.team(old, "old", roles=["planner", "reviewer"]),
                             nats=nats_url, namespace=namespace, grace_s=3):
                await client.submit(TaskRequest(goal="w1"), workflow_id="w1")
                while not any(e.topic == "step.write" for e in await _events(client, "w1")):
                    await anyio.sleep(0.05)
            # Upgraded: the daemon now runs the new graph, whose first step is `draft`.
            async with Swarm(seen.team(new, "new"), nats=nats_url, namespace=namespace,
                             grace_s=3):
                result = await client.result("w1")
            trail = await client.trail("w1")

    assert result.status == "approved", result.reason
    assert result.workflow == old.hash  # finished by the graph it started on
    steps = [t.subject.split(".", 3)[3] for t in trail if ".step." in t.subject]
    assert steps == ["step.write", "step.review"]
    assert ("new-writer", "w1") in seen.calls  # the new daemon served the old step


async def test_a_rolling_upgrade_serves_old_and_new_runs_side_by_side(
    nats_url: str, namespace: str
) -> None:
    old, new = workflow("essay", "write"), workflow("essay", "draft")
    seen = Seen()
    with anyio.fail_after(40):
        async with (
            Swarm(seen.team(old, "old"), nats=nats_url, namespace=namespace, grace_s=3),
            Swarm(seen.team(new, "new", supervisor=False, make_default=True),
                  nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            for i in range(8):
                await client.submit(TaskRequest(goal=f"r{i}", workflow=old.hash
                                                if i % 2 else new.hash), workflow_id=f"r{i}")
            results = [await client.result(f"r{i}") for i in range(8)]

    assert [r.status for r in results] == ["approved"] * 8, [r.reason for r in results]
    assert [r.workflow for r in results] == [new.hash, old.hash] * 4
    assert len(seen.calls) == 24  # each step once, by whichever daemon took it


async def _events(client: SwarmClient, wf: str) -> list[Any]:
    return [s.decode() for s in await client.trail(wf)]


def test_up_runs_a_step_served_by_code_and_names_a_role_it_will_not_run(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step bound to a class (``agent:``) needs no model: ``swarmbus up`` serves it.
    A role it cannot serve here is named with why, not left silently waiting."""
    from swarmbus.agents.app import SwarmConfig, build_agents

    file = tmp_path / "lint.yaml"
    file.write_text(
        "name: lint\n"
        "artifacts: {audit: swarmbus.Verdict}\n"
        "steps:\n"
        "- {id: design, role: architect}\n"
        "- {id: implement, role: coder, input: design}\n"
        "- id: audit\n"
        "  role: auditor\n"
        "  agent: test_workflow_examples:KeywordAuditor\n"
        "  input: code\n"
        "  output: audit\n"
        "  routes: {approve: end, revise_code: {to: implement, max: 1}, "
        "revise_design: {to: design, max: 1}}\n")
    cfg = SwarmConfig(workflow=str(file), roles={"architect": {"model": "openai:gpt-4o"}})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-0000000000000")
    agents = build_agents(cfg)
    names = {a.name: type(a).__name__ for a in agents}
    assert names == {"architect": "StepAgent", "auditor": "KeywordAuditor",
                     "supervisor": "Supervisor"}, names
    said = capsys.readouterr()
    assert "role not run here" in said.out + said.err
    assert "coder" in said.out + said.err and "have no model" in said.out + said.err


async def test_a_new_version_of_the_default_workflow_takes_over_as_an_upgrade(
    nats_url: str, namespace: str
) -> None:
    """Restarting on a changed file of the default workflow is an upgrade: new tasks that
    name no workflow follow the new graph; another workflow never takes over unasked."""
    old, new, other = workflow("essay", "write"), workflow("essay", "draft"), workflow(
        "report", "write", writer="author")
    seen = Seen()
    with anyio.fail_after(40):
        async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
            async with Swarm(seen.team(old, "old"), nats=nats_url, namespace=namespace,
                             grace_s=3):
                pass
            async with Swarm(seen.team(other, "other"), nats=nats_url, namespace=namespace,
                             grace_s=3):
                pass
            store = await WorkflowStore.open(client.bus)
            assert await store.resolve(None) == old.hash  # another workflow: unchanged
            async with Swarm(seen.team(new, "new"), nats=nats_url, namespace=namespace,
                             grace_s=3):
                await client.submit(TaskRequest(goal="u1"), workflow_id="u1")
                result = await client.result("u1")
            fresh = await WorkflowStore.open(client.bus)
            assert await fresh.resolve(None) == new.hash
    assert result.status == "approved" and result.workflow == new.hash


def test_a_step_model_given_as_a_spec_or_a_chain_is_built_from_it() -> None:
    """`model:` in a step may be a name, a spec or a fallback chain, as the README says:
    the step agent builds it from the typed config, not from the file's raw mapping."""
    from swarmbus.agents.models import FallbackSpec, ModelSpec
    from swarmbus.agents.workflow import StepAgent, Workflows

    built: list[Any] = []

    def build(config: Any) -> Model:
        built.append(config)
        return FunctionModel(lambda r: Text(text="x"), name="t:built")

    spec = Workflow.parse({"name": "m", "artifacts": {"a": "swarmbus.Text"}, "steps": [
        {"id": "one", "role": "writer", "output": "a",
         "model": {"name": "openai:gpt-4o", "base_url": "http://127.0.0.1:9/v1"}},
        {"id": "two", "role": "writer", "input": "a", "output": "a",
         "model": {"fallback": ["openai:gpt-4o", "anthropic:claude-haiku-4-5"]}},
    ]})
    StepAgent("writer", workflows=Workflows(compile_workflow(spec)), build=build)
    assert isinstance(built[0], ModelSpec) and built[0].base_url == "http://127.0.0.1:9/v1"
    assert isinstance(built[1], FallbackSpec) and len(built[1].fallback) == 2
