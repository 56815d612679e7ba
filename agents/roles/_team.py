"""The three built-in roles: task -> architect -> design -> coder -> code -> reviewer,
and the reviewer's routes back (revise.code, revise.design) or on (result)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from swarmbus.protocols import (
    ROLE_TOPICS,
    Code,
    CodeSubmission,
    Design,
    DesignSpec,
    Finding,
    Provenance,
    RevisionRequest,
    TaskRequest,
    TestReport,
    Verdict,
    WorkState,
)

from .._agent import Context, handles
from .._sandbox import SandboxLimits, run_tests
from ._base import RoleAgent, WorkflowEnded

__all__ = ["Architect", "Coder", "Reviewer"]

class Architect(RoleAgent):
    """task / revise.design -> design."""

    role: ClassVar[str] = "architect"
    assert ROLE_TOPICS[role] == ("task", "revise.design")

    @handles("task")
    async def on_task(self, msg: TaskRequest, ctx: Context[TaskRequest]) -> None:
        limits = msg.limits
        try:
            deadline = limits.deadline or datetime.now(UTC) + timedelta(seconds=limits.timeout_s)
        except OverflowError:  # a timeout beyond the calendar: no deadline in practice
            deadline = datetime.max.replace(tzinfo=UTC)
        if deadline.tzinfo is None:
            deadline = deadline.replace(tzinfo=UTC)
        state = WorkState(task=msg, round=1, deadline=deadline)
        await self._design(ctx, state)

    @handles("revise.design")
    async def on_revise(self, msg: RevisionRequest, ctx: Context[RevisionRequest]) -> None:
        await self._design(ctx, msg.state)

    async def _design(self, ctx: Context[Any], state: WorkState) -> None:
        try:
            design, prov = await self.ask(ctx, state, Design)
        except WorkflowEnded:
            return
        state.design = design
        state.findings = [f for f in state.findings if f.target != "architect"]
        await ctx.publish(DesignSpec(state=state, provenance=prov), round=state.round,
                          model=prov.name)


class Coder(RoleAgent):
    """design / revise.code -> code (source files and their tests)."""

    role: ClassVar[str] = "coder"

    @handles("design")
    async def on_design(self, msg: DesignSpec, ctx: Context[DesignSpec]) -> None:
        await self._code(ctx, msg.state)

    @handles("revise.code")
    async def on_revise(self, msg: RevisionRequest, ctx: Context[RevisionRequest]) -> None:
        await self._code(ctx, msg.state)

    async def _code(self, ctx: Context[Any], state: WorkState) -> None:
        try:
            code, prov = await self.ask(ctx, state, Code)
        except WorkflowEnded:
            return
        state.code = code
        await ctx.publish(CodeSubmission(state=state, provenance=prov), round=state.round,
                          model=prov.name)


class Reviewer(RoleAgent):
    """code -> run the submitted tests in the sandbox -> verdict -> result / revise.*"""

    role: ClassVar[str] = "reviewer"

    def __init__(self, model: Any, *, sandbox: SandboxLimits | None = None, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.sandbox = sandbox or SandboxLimits()

    @handles("code")
    async def on_code(self, msg: CodeSubmission, ctx: Context[CodeSubmission]) -> None:
        state = msg.state
        try:
            await self.check_limits(ctx, state)
            files = state.code.files if state.code else []
            state.test_report = await run_tests(files, limits=self.sandbox)
            ctx.log.info("tests ran", passed=state.test_report.passed,
                         failed=state.test_report.failed, errors=state.test_report.errors)
            if not state.test_report.ok:
                # If a limit ends the workflow before the verdict, the facts are its findings.
                state.findings = [_failing_tests_finding(state.test_report)]
            verdict, prov = await self.ask(ctx, state, Verdict)
            await self._route(ctx, state, _grounded(verdict, state), prov)
        except WorkflowEnded:
            return

    async def _route(
        self, ctx: Context[Any], state: WorkState, v: Verdict, prov: Provenance
    ) -> None:
        limits = state.task.limits
        state.findings = v.findings
        if v.decision == "approve":
            await self.finish(ctx, state, "approved", v.summary, model=prov.name)
        if v.decision == "revise_code":
            if state.code_revisions >= limits.max_code_revisions:
                await self.finish(ctx, state, "rounds_exhausted",
                                  f"code sent back {state.code_revisions} times (cap "
                                  f"{limits.max_code_revisions}); last verdict: {v.summary}",
                                  model=prov.name)
            state.code_revisions += 1
            topic = "revise.code"
        else:
            if state.design_revisions >= limits.max_design_revisions:
                await self.finish(ctx, state, "rounds_exhausted",
                                  f"design sent back {state.design_revisions} times (cap "
                                  f"{limits.max_design_revisions}); last verdict: {v.summary}",
                                  model=prov.name)
            state.design_revisions += 1
            topic = "revise.design"
        state.round += 1
        await ctx.publish(RevisionRequest(state=state, verdict=v, provenance=prov), topic=topic,
                          round=state.round, model=prov.name)


def _grounded(v: Verdict, state: WorkState) -> Verdict:
    """Never approve failing tests: the sandbox's facts overrule the model."""
    report = state.test_report
    if v.decision != "approve" or report is None or report.ok:
        return v
    finding = _failing_tests_finding(report)
    return Verdict(decision="revise_code", summary="the submitted tests fail",
                   findings=[*v.findings, finding])


def _failing_tests_finding(report: TestReport) -> Finding:
    names = ", ".join(report.failed_tests[:10]) or f"exit code {report.exit_code}"
    return Finding(
        severity="critical", location="tests",
        explanation=f"the submitted tests do not pass ({names}); fix the code or the tests",
        target="coder",
    )
