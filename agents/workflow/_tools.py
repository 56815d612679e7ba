"""Tools a step can use: facts gathered before its model is asked, and rules its
answer must respect afterwards.

``sandbox.pytest`` runs the tests of the step's code input in the sandbox (and,
when the task carries them, its hidden acceptance tests in a separate run),
gives the model the facts, and never lets an answer approve failing tests: an
approving route value becomes the ``on_fail`` one (the route back to whoever
wrote the code) with the failing tests as a finding. That rule is the tool's,
for any workflow, not a role's.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from swarmbus.protocols import (
    END,
    Code,
    CompiledWorkflow,
    ConfigError,
    Finding,
    SourceFile,
    StepSpec,
    TestReport,
    route_key,
)

from ._prompt import steady
from ._spans import record_report, tool_span

if TYPE_CHECKING:
    from ._step import StepCall

__all__ = [
    "SandboxPytest",
    "TestRunner",
    "Tool",
    "Toolbox",
    "approving_values",
    "failing_tests_finding",
    "send_back_value",
    "value_of",
]


class TestRunner(Protocol):
    """Runs submitted files' tests; ``swarmbus.agents.sandbox.run_tests`` is the real one.

    Tests and benchmarks may inject another (e.g. one that returns a fixed report)."""

    def __call__(self, files: Sequence[SourceFile]) -> Awaitable[TestReport]: ...


class Tool(Protocol):
    """A step's tool: ``before`` adds facts to ``call.state``; ``after`` may correct
    the answer (return it unchanged when there is nothing to correct)."""

    name: str

    async def before(self, call: StepCall) -> None: ...

    def after(self, call: StepCall, output: BaseModel) -> BaseModel: ...


def failing_tests_finding(report: TestReport, target: str) -> Finding:
    names = ", ".join(steady(t) for t in report.failed_tests[:10]) or (
        "no test passed" if report.exit_code == 0 else f"exit code {report.exit_code}")
    return Finding(
        severity="critical", location="tests",
        explanation=f"the submitted tests do not pass ({names}); fix the code or the tests",
        target=target,
    )


class SandboxPytest:
    """``sandbox.pytest``: the submission's own tests, then hidden acceptance tests.

    ``runner`` runs the submission's tests; ``acceptance`` the hidden ones (a
    separate run; None: hidden tests are not run). The step's answer may not pick
    an *approving* route while they fail: the step's ``approve`` values (default:
    every value whose route ends the run approved or goes forward) are turned into
    its ``on_fail`` value (default: the route back to the step that produced the
    code), with the failing tests as a finding. ``on_fail`` here sets that value for
    every step that uses this tool (a step's own setting wins).
    """

    name = "sandbox.pytest"

    def __init__(
        self,
        runner: TestRunner,
        *,
        acceptance: AcceptanceRunner | None = None,
        on_fail: str | None = None,
    ) -> None:
        self.runner = runner
        self.acceptance = acceptance
        self.on_fail = on_fail

    async def before(self, call: StepCall) -> None:
        name, code = _code_input(call)
        if code is None:
            return
        state = call.state
        with tool_span(self.name) as span:
            state.test_report = report = await self.runner(code.files)
            record_report(span, report)
        target = call.producer_role(name)
        if not report.ok:
            # If a limit ends the workflow before the answer, the facts are its findings.
            state.findings = [failing_tests_finding(report, target)]
        tests = state.task.acceptance_tests
        if tests and self.acceptance is not None:
            state.acceptance = await self.acceptance(code.files, tests)
        call.ctx.log.info("tests ran", passed=report.passed, failed=report.failed,
                          errors=report.errors,
                          acceptance=None if state.acceptance is None else state.acceptance.ok)

    def after(self, call: StepCall, output: BaseModel) -> BaseModel:
        report, acceptance = call.state.test_report, call.state.acceptance
        step = call.step
        if report is None or not step.routes:
            return output
        spec = step.tool(self.name)
        approving = set(spec.approve) if spec is not None and spec.approve is not None else (
            approving_values(call.workflow, step))
        if route_key(vars(output).get(step.route_on)) not in approving:
            return output
        name, _ = _code_input(call)
        target = call.producer_role(name)
        if not report.ok:
            finding = failing_tests_finding(report, target)
            summary = "the submitted tests fail"
        elif acceptance is not None and not acceptance.ok:
            finding = Finding(
                severity="critical", location="acceptance tests",
                explanation=f"hidden acceptance tests fail ({acceptance.failed + acceptance.errors}"
                f" failing, {acceptance.passed} passing); re-read the goal and its constraints",
                target=target)
            summary = "the hidden acceptance tests fail"
        else:
            return output
        on_fail = (spec.on_fail if spec is not None and spec.on_fail else None) or self.on_fail \
            or send_back_value(call.workflow, step, name)
        if on_fail is None:  # refused by the check: a workflow that loads has one
            raise ConfigError(f"step {step.id!r}: sandbox.pytest has no route to send "
                              "failing code back on: give it `on_fail`")
        fields = type(output).model_fields
        update: dict[str, object] = {step.route_on: value_of(type(output), step.route_on,
                                                             on_fail)}
        if "summary" in fields:
            update["summary"] = summary
        if "findings" in fields:
            update["findings"] = [*(vars(output).get("findings") or []), finding]
        return output.model_copy(update=update)


def approving_values(wf: CompiledWorkflow, step: StepSpec) -> set[str]:
    """The route values of ``step`` that let work through: those whose route ends the
    run approved or goes to a later step (not back, not to a failed end)."""
    out = set()
    for key, edge in step.routes.items():
        if edge.to == END:
            if edge.status == "approved":
                out.add(key)
        elif not wf.sends_back(step.id, edge.to):
            out.add(key)
    return out


def send_back_value(wf: CompiledWorkflow, step: StepSpec, artifact: str) -> str | None:
    """The route value of ``step`` that sends work back to the step producing
    ``artifact`` (None: no route does)."""
    producer = wf.producer(artifact)
    for key, edge in step.routes.items():
        if producer is not None and edge.to == producer.id:
            return key
    return None


def value_of(output_type: type[BaseModel], field: str, key: str) -> Any:
    """The value of ``output_type.<field>`` whose route is ``key`` (see ``route_key``):
    the Literal's, the bool's or the Enum member that names it; ``key`` itself else."""
    info = output_type.model_fields.get(field)
    annotation = info.annotation if info is not None else None
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    candidates: list[Any] = []
    if typing.get_origin(annotation) is typing.Literal:
        candidates = list(typing.get_args(annotation))
    elif annotation is bool:
        candidates = [True, False]
    elif isinstance(annotation, type) and issubclass(annotation, Enum):
        candidates = list(annotation)
    return next((c for c in candidates if route_key(c) == key), key)


class AcceptanceRunner(Protocol):
    """Runs hidden acceptance ``tests`` against submitted ``files`` (a separate run)."""

    def __call__(
        self, files: Sequence[SourceFile], tests: Sequence[SourceFile]
    ) -> Awaitable[TestReport]: ...


def _code_input(call: StepCall) -> tuple[str, Code | None]:
    for name, value in call.inputs.items():
        if isinstance(value, Code):
            return name, value
    return "", None


Toolbox = dict[str, Tool]
"""Tool name -> tool, as the step runtime is given them."""
