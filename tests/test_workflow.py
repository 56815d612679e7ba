"""Workflows as data: the format (long and short form), its checks (each fault named by
file, path and fix), the committed JSON Schema, ``swarmbus workflow check/show``, and the
one pure routing function, property-tested on random graphs."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from swarmbus.agents.app import main as cli_main
from swarmbus.agents.workflow import builtin_workflows, compile_workflow, load_workflow
from swarmbus.protocols import (
    CompiledWorkflow,
    Edge,
    Finish,
    Goto,
    StepSpec,
    Verdict,
    Workflow,
    WorkflowError,
    route,
    workflow_json_schema,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "workflows"
SCHEMA = ROOT / "protocols" / "workflow.schema.json"


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(list(args))
    return code, out.getvalue(), err.getvalue()


# -- the format ------------------------------------------------------------------------------


def test_the_built_in_team_is_a_packaged_workflow() -> None:
    assert builtin_workflows() == ["builtin:code-review", "builtin:code-review-parallel"]
    wf = load_workflow("builtin:code-review")
    assert [(s.id, s.role, s.output) for s in wf.spec.steps] == [
        ("design", "architect", "design"), ("implement", "coder", "code"),
        ("review", "reviewer", "verdict")]
    assert wf.topics("architect") == ["task", "step.design"]
    assert wf.topics("coder") == ["step.implement"]
    assert wf.topics("reviewer") == ["step.review"]
    review = wf.steps["review"]
    assert review.tools == ["sandbox.pytest"]
    assert review.routes == {"approve": Edge(to="end"),
                             "revise_code": Edge(to="implement", max=3),
                             "revise_design": Edge(to="design", max=2)}
    assert review.system is not None and "reviewer" in review.system  # the prompt file
    assert load_workflow("builtin:code-review").hash == wf.hash  # content-addressed


def test_the_seed_example_loads_as_written() -> None:
    wf = load_workflow(EXAMPLES / "seed.yaml")
    assert wf.name == "seed"
    assert [(s.id, s.role, s.model, s.input, s.output) for s in wf.spec.steps] == [
        ("architect", "architect", "google:gemini-2.5-pro", [], "architecture_spec"),
        ("coder", "coder", "openai:gpt-4o", ["architecture_spec"], "code"),
        ("reviewer", "reviewer", "anthropic:claude-sonnet-4-5",
         ["architecture_spec", "code"], "verdict"),
    ]
    assert wf.spec.artifacts == {"architecture_spec": "swarmbus.Design",
                                 "code": "swarmbus.Code", "verdict": "swarmbus.Verdict"}
    assert wf.steps["architect"].task == (
        "Design the class structure for a payment processing system")
    assert wf.successor("reviewer") == "end"


def test_short_form_ids_come_from_roles_and_stay_unique() -> None:
    spec = Workflow.parse({"workflow": [{"role": "coder"}, {"role": "coder", "input": "code"},
                                        {"id": "coder-2", "role": "reviewer"}]})
    assert [s.id for s in spec.steps] == ["coder", "coder-3", "coder-2"]


def test_the_four_role_example_checks() -> None:
    wf = load_workflow(EXAMPLES / "security-review.yaml")
    assert list(wf.roles) == ["architect", "coder", "auditor", "reviewer"]
    audit = wf.steps["audit"]
    assert audit.system is not None and "security auditor" in audit.system
    assert audit.routes["revise_code"] == Edge(to="implement", max=2)
    assert {s.model for s in wf.spec.steps} == {
        "google:gemini-2.5-pro", "openai:gpt-4o", "anthropic:claude-haiku-4-5"}


# -- checks ----------------------------------------------------------------------------------

BAD = {
    "unknown target": (
        "steps:\n- {id: a, role: coder, output: code, next: b}\n",
        "steps[0].next", "no step 'b'"),
    "unknown route target": (
        "steps:\n- {id: a, role: coder}\n- {id: r, role: reviewer, input: code, routes: "
        "{approve: end, revise_code: {to: nowhere, max: 1}, revise_design: end}}\n",
        "steps[1].routes.revise_code.to", "no step 'nowhere'"),
    "input nobody produces": (
        "steps:\n- {id: a, role: architect}\n- {id: c, role: coder, input: plan}\n",
        "steps[1].input", "no step produces 'plan'"),
    "input not on every path": (
        "artifacts: {note: swarmbus.Text, out: swarmbus.Text}\n"
        "steps:\n- {id: a, role: reviewer, routes: {approve: c, revise_code: b, "
        "revise_design: c}}\n- {id: b, role: writer, output: note, next: c}\n"
        "- {id: c, role: reader, input: note, output: out}\n",
        "steps[2].input", "'note' is not produced on every path to 'c'"),
    "cycle without a cap": (
        "artifacts: {t: swarmbus.Text}\n"
        "steps:\n- {id: a, role: coder, next: b}\n- {id: b, role: tester, output: t, next: a}\n",
        "steps[1]", "cycle without a capped edge"),
    "type that does not resolve": (
        "artifacts: {plan: acme.Plan}\nsteps:\n- {id: a, role: planner, output: plan}\n",
        "artifacts.plan", "unknown data type 'acme.Plan'"),
    "output without a type": (
        "steps:\n- {id: a, role: planner, output: plan}\n",
        "steps[0].output", "add `artifacts: {plan: swarmbus.Text}`"),
    "route on a missing field": (
        "steps:\n- {id: a, role: coder}\n- {id: r, role: reviewer, input: code, "
        "route_on: verdict, routes: {approve: end}}\n",
        "steps[1].route_on", "Verdict has no field 'verdict'"),
    "a value with no route": (
        "steps:\n- {id: a, role: coder}\n- {id: r, role: reviewer, input: code, routes: "
        "{approve: end, revise_code: {to: a, max: 2}}}\n",
        "steps[1].routes", "no route for decision = revise_design"),
    "a route for a value that never comes": (
        "steps:\n- {id: a, role: coder}\n- {id: r, role: reviewer, input: code, routes: "
        "{approve: end, revise_code: {to: a, max: 2}, revise_design: end, lgtm: end}}\n",
        "steps[1].routes.lgtm", "never 'lgtm'"),
    "unknown tool": (
        "steps:\n- {id: a, role: coder, tools: [web.search]}\n",
        "steps[0].tools", "unknown tool 'web.search'"),
    "tool without its input": (
        "steps:\n- {id: a, role: reviewer, tools: [sandbox.pytest]}\n",
        "steps[0].tools", "sandbox.pytest runs the tests of a code input"),
    "missing prompt file": (
        "steps:\n- {id: a, role: coder, prompt: nope.md}\n",
        "steps[0].prompt", "cannot read 'nope.md'"),
    "unknown template name": (
        "steps:\n- {id: a, role: coder, task: 'Do {{ goal }}'}\n",
        "steps[0].task", "unknown template names ['goal']"),
    "model without a provider": (
        "steps:\n- {id: a, role: coder, model: llama3.1}\n",
        "steps[0].model", "write 'provider:llama3.1'"),
    "unknown key": (
        "steps:\n- {id: a, role: coder, modle: gpt-4o}\n",
        "steps[0].modle", "Extra inputs are not permitted"),
    "duplicate id": (
        "steps:\n- {id: a, role: coder}\n- {id: a, role: reviewer}\n",
        "steps", "two steps have the id 'a'"),
    "a step never reached": (
        "steps:\n- {id: a, role: coder, next: end}\n- {id: b, role: reviewer, input: code}\n",
        "steps[1]", "never reached"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_fault_names_the_file_the_path_and_the_fix(tmp_path: Path, case: str) -> None:
    text, path, words = BAD[case]
    file = tmp_path / "wf.yaml"
    file.write_text(text)
    with pytest.raises(WorkflowError) as caught:
        load_workflow(file)
    err = caught.value
    assert err.source == str(file)
    assert any(p.path == path and words in p.message for p in err.problems), err.problems
    code, out, stderr = run_cli("workflow", "check", str(file))
    assert code == 2 and out == ""
    assert stderr.startswith(f"error: invalid workflow {file}:")
    assert f"{path}: " in stderr and "Traceback" not in stderr


def test_check_and_show_from_the_command_line() -> None:
    code, out, _ = run_cli("workflow", "check", "builtin:code-review")
    assert code == 0 and "workflow code-review checks (3 steps;" in out
    code, out, _ = run_cli("workflow", "show", "builtin:code-review")
    assert code == 0
    assert "review -> implement [decision=revise_code] (max 3)" in out
    assert "review -> end [decision=approve]" in out
    code, out, _ = run_cli("workflow", "show", "--mermaid", str(EXAMPLES / "security-review.yaml"))
    assert code == 0 and out.startswith("flowchart TD\n")
    assert "s_audit -->|decision=revise_code max 2| s_implement" in out
    assert "s_review -->|decision=approve| finish" in out
    code, _, err = run_cli("workflow", "check", "/no/such.yaml")
    assert code == 2 and "cannot read it" in err


# -- the schema ------------------------------------------------------------------------------


def test_the_committed_schema_is_the_generated_one() -> None:
    assert json.loads(SCHEMA.read_text()) == workflow_json_schema(), (
        "regenerate protocols/workflow.schema.json: python -c 'import json; from "
        "swarmbus.protocols import workflow_json_schema as s; print(json.dumps(s(), "
        "indent=2))' > protocols/workflow.schema.json")


def test_every_shipped_workflow_validates_against_the_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    files = [*EXAMPLES.glob("*.yaml"),
             *(ROOT / "agents" / "workflow" / "builtin").glob("*.yaml")]
    assert len(files) >= 3
    for file in files:
        jsonschema.validate(yaml.safe_load(file.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"steps": [{"role": "coder", "modle": "x"}], "name": "x"}, schema)


def test_swarmbus_schema_includes_the_workflow_format() -> None:
    code, out, _ = run_cli("schema")
    assert code == 0
    assert json.loads(out)["swarmbus.workflow/v1"] == workflow_json_schema()


# -- routing (pure) --------------------------------------------------------------------------


def _review_wf(**step: Any) -> CompiledWorkflow:
    spec = Workflow.parse({"name": "t", "artifacts": {"code": "swarmbus.Code",
                                                     "verdict": "swarmbus.Verdict"},
                           "steps": [{"id": "implement", "role": "coder", "output": "code"},
                                     {"id": "review", "role": "reviewer", "input": "code",
                                      "output": "verdict", **step}]})
    return compile_workflow(spec)


def test_route_ends_sends_back_and_caps() -> None:
    wf = _review_wf(routes={"approve": "end", "revise_code": {"to": "implement", "max": 2},
                            "revise_design": {"to": "implement", "max": 0}})
    ok = Verdict(decision="approve", summary="fine")
    back = Verdict(decision="revise_code", summary="tests fail")
    assert route(wf, "review", ok, {}) == Finish("approved", "fine", "review.approve")
    assert route(wf, "review", back, {}) == Goto("implement", "review.revise_code", True,
                                                 sent_back_to="coder")
    assert route(wf, "review", back, {"review.revise_code": 1}) == Goto(
        "implement", "review.revise_code", True, sent_back_to="coder")
    assert route(wf, "review", back, {"review.revise_code": 2}) == Finish(
        "rounds_exhausted", "review.revise_code taken 2 times (cap 2); last: tests fail",
        "review.revise_code")
    # a cap override by route name (Limits.caps), or by the role work goes back to
    # (Limits.send_backs; max_code_revisions is send_backs["coder"])
    assert isinstance(route(wf, "review", back, {"review.revise_code": 2},
                            {"revise_code": 5}), Goto)
    assert isinstance(route(wf, "review", back, {"review.revise_code": 2},
                            send_backs={"coder": 2}, send_back_caps={"coder": 5}), Goto)
    assert route(wf, "review", back, {}, send_backs={"coder": 1},
                 send_back_caps={"coder": 1}) == Finish(
        "rounds_exhausted", "work sent back to the coder 1 times (cap 1); last: tests fail",
        "review.revise_code")
    design = Verdict(decision="revise_design", summary="no")
    assert route(wf, "review", design, {}).status == "rounds_exhausted"  # type: ignore[union-attr]
    assert route(wf, "implement", None, {}) == Goto("review", "implement.next")
    failing = _review_wf(on_cap="fail", routes={
        "approve": "end", "revise_code": {"to": "implement", "max": 0},
        "revise_design": "end"})
    assert route(failing, "review", back, {}).status == "failed"  # type: ignore[union-attr]
    odd = {"decision": "maybe", "summary": ""}
    assert route(wf, "review", odd, {}) == Finish(
        "failed", "review answered decision='maybe', which has no route")


class _Choice(BaseModel):
    decision: str


@st.composite
def graphs(draw: st.DrawFn) -> tuple[CompiledWorkflow, int]:
    """A random workflow: steps in order, forward edges uncapped, every edge back (or to
    itself) capped. Returns it and the sum of its caps."""
    n = draw(st.integers(1, 6))
    steps: list[dict[str, Any]] = []
    caps = 0
    for i in range(n):
        forward = [f"s{j}" for j in range(i + 1, n)] + ["end"]
        step: dict[str, Any] = {"id": f"s{i}", "role": "r", "output": f"o{i}"}
        if draw(st.booleans()):
            routes: dict[str, Any] = {"go": draw(st.sampled_from(forward))}
            for k in range(draw(st.integers(0, 3))):
                cap = draw(st.integers(0, 3))
                caps += cap
                routes[f"back{k}"] = {"to": f"s{draw(st.integers(0, i))}", "max": cap}
            step["routes"] = routes
        steps.append(step)
    spec = Workflow.parse({"name": "g", "steps": steps,
                           "artifacts": {f"o{i}": "tests.Choice" for i in range(n)}})
    return CompiledWorkflow(spec, {f"o{i}": _Choice for i in range(n)}), caps


@settings(max_examples=300, deadline=None, database=None)
@given(graphs(), st.data())
def test_random_graphs_with_capped_back_edges_always_end(
    g: tuple[CompiledWorkflow, int], data: st.DataObject
) -> None:
    """Whatever each step answers, the run ends: within len(steps) * (sum(max) + 1) step
    runs (between two capped edges taken, uncapped edges only move forward)."""
    wf, caps = g
    n = len(wf.spec.steps)
    bound = n * (caps + 1)
    edges: dict[str, int] = {}
    step, runs = wf.entry.id, 0
    while True:
        runs += 1
        assert runs <= bound, (runs, bound)
        spec = wf.steps[step]
        value = data.draw(st.sampled_from(sorted(spec.routes))) if spec.routes else "go"
        decision = route(wf, step, {"decision": value}, edges)
        if isinstance(decision, Finish):
            assert decision.status in ("approved", "rounds_exhausted")
            return
        if decision.capped:
            edges[decision.edge] = edges.get(decision.edge, 0) + 1
        step = decision.step


def test_the_bound_is_per_round_not_sum_plus_steps() -> None:
    """Why the bound above is len(steps) * (sum(max) + 1): one capped edge back over three
    steps already takes six runs, more than sum(max) + len(steps) = 4."""
    wf = CompiledWorkflow(Workflow.parse({"name": "w", "artifacts": {"o": "x"}, "steps": [
        {"id": "a", "role": "r"}, {"id": "b", "role": "r"},
        {"id": "c", "role": "r", "output": "o",
         "routes": {"go": "end", "back": {"to": "a", "max": 1}}}]}), {"o": _Choice})
    step, runs, edges = "a", 0, {}  # type: ignore[var-annotated]
    answers = iter(["back", "back"])
    while True:
        runs += 1
        value = next(answers) if wf.steps[step].routes else "go"
        d = route(wf, step, {"decision": value}, edges)
        if isinstance(d, Finish):
            break
        if d.capped:
            edges[d.edge] = edges.get(d.edge, 0) + 1
        step = d.step
    assert runs == 6 > 1 + 3


def test_steps_are_typed() -> None:
    step = StepSpec.model_validate({"id": "x", "role": "r", "input": "a + b",
                                    "tools": "sandbox.pytest", "routes": {"approve": "end"}})
    assert step.input == ["a", "b"] and step.tools == ["sandbox.pytest"]
    assert step.routes == {"approve": Edge(to="end")}
