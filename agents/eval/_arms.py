"""The arms of an evaluation: each one a workflow, run by the generic step runtime.

- ``canonical``: no model; one step whose agent answers with the problem's
  canonical module (to validate the harness: it must score 100% on HumanEval).
- ``single:<model>``: one step, one call of ``<model>``, output ``swarmbus.Code``.
- ``retry:<model>``: that step, then a checker without a model that runs the
  submission's tests in the sandbox and sends the code back to the solver with
  the failing test output, up to the team's number of rounds.
- ``workflow:<name or file>``: any declared workflow (``builtin:code-review`` when
  no name is given), its models from the step specs or ``models`` (role -> model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from swarmbus.protocols import (
    Code,
    CompiledWorkflow,
    ConfigError,
    SourceFile,
    Verdict,
    Workflow,
)

from .._agent import Agent
from ..models import Model, ModelConfig
from ..workflow import (
    DEFAULT_WORKFLOW,
    StepAgent,
    StepCall,
    Tool,
    compile_workflow,
    failing_tests_finding,
    load_workflow,
    team,
)
from ._suite import SOLUTION_FILE

__all__ = [
    "SOLVER_PROMPT",
    "Arm",
    "ArmKind",
    "ArmPlan",
    "CanonicalSolver",
    "TestsChecker",
    "arm_workflow",
    "max_rounds",
    "parse_arm",
    "plan_arm",
]

ArmKind = Literal["canonical", "single", "retry", "workflow"]

SOLVER_PROMPT = """You are an expert Python programmer. Write exactly what the goal asks for.

Return `files` (the path and full content of every file) and short `notes`. Put the
solution in the file the goal names, and pytest tests for it in `test_*.py` files
beside it (flat layout). Only the standard library and pytest are available; no
network, no files outside the working directory.

When a test report or findings are shown, your previous code failed: fix what they
say and return the complete files again, not a diff.
"""
"""The system prompt of the ``single:`` and ``retry:`` arms' solver (the same for both)."""


@dataclass(frozen=True)
class Arm:
    """One arm, parsed from its spec (``single:openai:gpt-4o``); ``label`` names it
    in the results, ``target`` is its model or workflow ('' for ``canonical``)."""

    kind: ArmKind
    target: str
    label: str


def parse_arm(spec: str) -> Arm:
    """Parse an arm spec. Raises ``ConfigError`` naming the forms it takes."""
    text = spec.strip()
    kind, sep, target = text.partition(":")
    forms = "canonical, single:<model>, retry:<model>, workflow:<name or file>"
    if kind == "canonical":
        if sep:
            raise ConfigError(f"arm {spec!r}: canonical takes no model or workflow; "
                              "write canonical")
        return Arm("canonical", "", "canonical")
    if kind == "workflow":
        target = target.strip() or DEFAULT_WORKFLOW
        return Arm("workflow", target, f"workflow:{target}")
    if kind in ("single", "retry"):
        if not target.strip():
            raise ConfigError(f"arm {spec!r}: give a model, e.g. {kind}:openai:gpt-4o")
        return Arm(kind, target.strip(), f"{kind}:{target.strip()}")  # type: ignore[arg-type]
    raise ConfigError(f"arm {spec!r}: unknown kind {kind!r}; arms are {forms}")


class CanonicalSolver(StepAgent):
    """The ``canonical`` arm's step: no model; answers with the task's ``reference``
    input (the problem's canonical module) as ``solution.py``."""

    async def perform(self, call: StepCall) -> BaseModel:
        reference = call.state.task.inputs.get("reference")
        if reference is None:
            raise ConfigError("the canonical arm's task has no 'reference' input")
        return Code(files=[SourceFile(path=SOLUTION_FILE, content=reference)],
                    notes="the problem's canonical solution")


class TestsChecker(StepAgent):
    """The ``retry:`` arm's checker: no model. Approves when the submission's own
    tests pass in the sandbox (and the hidden ones, when the task carries them);
    otherwise sends the code back with the failing tests as a finding. Its step
    uses ``sandbox.pytest``, which gathers those facts and would overrule an
    approval of failing tests anyway."""

    __test__ = False  # not a pytest class

    async def perform(self, call: StepCall) -> BaseModel:
        report = call.state.test_report
        target = call.producer_role("code")
        if report is None:
            return Verdict(decision="revise_code", summary="no test report", findings=[])
        if not report.ok:
            return Verdict(decision="revise_code", summary="the submitted tests fail",
                           findings=[failing_tests_finding(report, target)])
        # Failing hidden tests (oracle feedback on): sandbox.pytest overrules this approval.
        return Verdict(decision="approve", summary="the submitted tests pass")


def max_rounds(workflow: CompiledWorkflow) -> int:
    """The most rounds a run of ``workflow`` can take: 1 plus the caps of its capped
    routes (each taken route with a cap starts a round: ``TaskResult.rounds``)."""
    return 1 + sum(e.max for s in workflow.spec.steps for e in s.routes.values()
                   if e.max is not None)


def arm_workflow(arm: Arm, *, rounds: int = 1) -> CompiledWorkflow:
    """The workflow that runs ``arm``; ``rounds`` bounds a ``retry:`` arm (its route
    back to the solver may be taken ``rounds - 1`` times). Raises ``ConfigError``
    (``WorkflowError``) for a workflow that does not load or a bad model name."""
    if arm.kind == "workflow":
        return load_workflow(arm.target)
    if arm.kind == "canonical":
        return compile_workflow(Workflow.parse({
            "name": "eval-canonical",
            "description": "The problem's canonical solution, no model (validates the harness).",
            "inputs": {"reference": {"description": "the canonical module"}},
            "artifacts": {"code": "swarmbus.Code"},
            "steps": [{"id": "solve", "role": "canonical", "output": "code",
                       "agent": "swarmbus.agents.eval:CanonicalSolver"}],
        }))
    solve = {"id": "solve", "role": "solver", "model": arm.target, "system": SOLVER_PROMPT,
             "output": "code"}
    if arm.kind == "single":
        return compile_workflow(Workflow.parse({
            "name": "eval-single", "description": "One model, one call.",
            "artifacts": {"code": "swarmbus.Code"}, "steps": [solve]}, source=arm.label))
    back = max(rounds - 1, 0)
    return compile_workflow(Workflow.parse({
        "name": "eval-retry",
        "description": "One model, re-asked with the failing test output.",
        "artifacts": {"code": "swarmbus.Code", "verdict": "swarmbus.Verdict"},
        "steps": [solve, {
            "id": "check", "role": "checker", "input": "code", "output": "verdict",
            "tools": ["sandbox.pytest"], "agent": "swarmbus.agents.eval:TestsChecker",
            "routes": {"approve": "end", "revise_code": {"to": "solve", "max": back},
                       "revise_design": {"to": "solve", "max": 0}}}],
    }, source=arm.label))


@dataclass(frozen=True)
class ArmPlan:
    """An arm ready to run: its workflow, the artifact holding the final code, and
    a factory for a fresh set of agents (one ``Swarm`` per arm)."""

    arm: Arm
    workflow: CompiledWorkflow
    code_artifact: str
    agents: Callable[[], list[Agent]]


def plan_arm(
    arm: Arm,
    *,
    rounds: int,
    tools: Mapping[str, Tool],
    models: Mapping[str, ModelConfig] | None = None,
    build: Callable[[ModelConfig], Model] | None = None,
) -> ArmPlan:
    """Resolve ``arm`` into a plan, building its agents once to fail early (an
    unknown model, a missing API key, a role without a model: ``ConfigError``).
    ``models`` gives the roles of a ``workflow:`` arm that name no model; ``build``
    turns a model config into a ``Model`` (default ``build_model``); the response
    cache is off."""
    wf = arm_workflow(arm, rounds=rounds)
    artifact = _code_artifact(wf, arm)
    given = dict(models or {})
    if arm.kind == "workflow":
        bare = [r for r, steps in wf.roles.items()
                if any(wf.steps[s].model is None and wf.steps[s].agent is None for s in steps)
                and r not in given]
        if bare:
            raise ConfigError(
                f"arm {arm.label}: roles {bare} have no model: give them with --models "
                f"{bare[0]}=openai:gpt-4o,... (or `model:` in the workflow's steps)")

    def agents() -> list[Agent]:
        from ..models import build_model

        make = build or build_model
        role_models: dict[str, Model] = {r: make(m) for r, m in given.items() if r in wf.roles}
        return team(wf, models=role_models, build=make, tools=tools, cache_ttl_s=None)

    agents()  # a bad model name or a missing key fails now, not mid-run (no SDK is loaded)
    return ArmPlan(arm, wf, artifact, agents)


def _code_artifact(wf: CompiledWorkflow, arm: Arm) -> str:
    code = [s.output for s in wf.spec.steps
            if s.output and isinstance(wf.types.get(s.output), type)
            and issubclass(wf.types[s.output], Code)]
    if not code:
        raise ConfigError(f"arm {arm.label}: workflow {wf.name!r} produces no swarmbus.Code "
                          "artifact: there is no solution to measure")
    return "code" if "code" in code else code[-1]


def labels(arms: Sequence[Arm]) -> list[str]:
    """The arms' labels; raises ``ConfigError`` when one repeats."""
    out = [a.label for a in arms]
    twice = sorted({x for x in out if out.count(x) > 1})
    if twice:
        raise ConfigError(f"arms {twice} are given twice")
    return out
