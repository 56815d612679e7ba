"""Tools a step can use: facts gathered before its model is asked, and rules its
answer must respect afterwards.

``sandbox.pytest`` runs the tests of the step's code input in the sandbox (and,
when the task carries them, its hidden acceptance tests in a separate run),
gives the model the facts, and never lets an answer approve failing tests: an
``approve`` becomes the ``on_fail`` route (``revise_code``) with the failing
tests as a finding. That rule is the tool's, not a role's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from swarmbus.protocols import Code, Finding, SourceFile, TestReport

if TYPE_CHECKING:
    from ._step import StepCall

__all__ = ["SandboxPytest", "TestRunner", "Tool", "Toolbox", "failing_tests_finding"]


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
    names = ", ".join(report.failed_tests[:10]) or (
        "no test passed" if report.exit_code == 0 else f"exit code {report.exit_code}")
    return Finding(
        severity="critical", location="tests",
        explanation=f"the submitted tests do not pass ({names}); fix the code or the tests",
        target=target,
    )


class SandboxPytest:
    """``sandbox.pytest``: the submission's own tests, then hidden acceptance tests.

    ``runner`` runs the submission's tests; ``acceptance`` the hidden ones (a
    separate run; None: hidden tests are not run). ``on_fail`` is the value an
    ``approve`` is changed to when the tests fail.
    """

    name = "sandbox.pytest"

    def __init__(
        self,
        runner: TestRunner,
        *,
        acceptance: AcceptanceRunner | None = None,
        on_fail: str = "revise_code",
    ) -> None:
        self.runner = runner
        self.acceptance = acceptance
        self.on_fail = on_fail

    async def before(self, call: StepCall) -> None:
        name, code = _code_input(call)
        if code is None:
            return
        state = call.state
        state.test_report = report = await self.runner(code.files)
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
        if vars(output).get("decision") != "approve" or report is None:
            return output
        findings: list[Finding] = list(vars(output).get("findings") or [])
        name, _ = _code_input(call)
        target = call.producer_role(name)
        if not report.ok:
            findings.append(failing_tests_finding(report, target))
            summary = "the submitted tests fail"
        elif acceptance is not None and not acceptance.ok:
            findings.append(Finding(
                severity="critical", location="acceptance tests",
                explanation=f"hidden acceptance tests fail ({acceptance.failed + acceptance.errors}"
                f" failing, {acceptance.passed} passing); re-read the goal and its constraints",
                target=target))
            summary = "the hidden acceptance tests fail"
        else:
            return output
        return output.model_copy(update={
            "decision": self.on_fail, "summary": summary, "findings": findings})


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
