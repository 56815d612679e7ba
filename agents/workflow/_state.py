"""A run's ``WorkState``: how it starts, which task inputs it lacks, and what a step's
answer does to the open findings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from swarmbus.protocols import (
    DEFAULT_BUDGET_USD,
    CompiledWorkflow,
    Finding,
    StepSpec,
    TaskRequest,
    WorkflowLimits,
    WorkState,
)

from .._agent import Context

__all__ = ["missing_inputs", "start_state", "state_for_task", "update_findings"]


def missing_inputs(task: TaskRequest, wf: CompiledWorkflow) -> list[str]:
    return [k for k, spec in wf.spec.inputs.items()
            if spec.default is None and k not in task.inputs]


def start_state(task: TaskRequest, wf: CompiledWorkflow, ctx: Context[Any]) -> WorkState:
    """The state a run starts with: effective limits, the deadline counted from
    submission (the task's stamp, else the stream's time of the message)."""
    stamped = (datetime.fromtimestamp(ctx.delivery.timestamp, UTC)
               if ctx.delivery.timestamp else None)
    return state_for_task(task, wf, stamped)


def state_for_task(
    task: TaskRequest, wf: CompiledWorkflow | None, stored_at: datetime | None = None
) -> WorkState:
    """The state of a run of ``wf`` for ``task`` before any step ran: the limits in
    force (the task's, else the workflow's, else the defaults), the deadline counted
    from submission (``task.submitted_at``, else ``stored_at``, the stream's time of
    the task, else now) and the inputs' defaults."""
    submitted = task.submitted_at or stored_at or datetime.now(UTC)
    limits = task.limits
    defaults = wf.spec.limits if wf is not None else WorkflowLimits()
    deadline = limits.deadline_from(submitted, defaults.timeout_s)
    budget = limits.budget_usd if limits.budget_usd is not None else (
        defaults.budget_usd if defaults.budget_usd is not None else DEFAULT_BUDGET_USD)
    if wf is not None:
        inputs = {k: spec.default for k, spec in wf.spec.inputs.items()
                  if spec.default is not None and k not in task.inputs}
        if inputs:
            task = task.model_copy(update={"inputs": {**inputs, **task.inputs}})
    return WorkState(task=task, workflow=wf.hash if wf is not None else "", round=1,
                     deadline=deadline, budget_usd=budget, caps=limits.route_caps(),
                     send_back_caps=limits.send_back_caps())


def update_findings(state: WorkState, step: StepSpec, output: BaseModel) -> None:
    """A step's answer with ``findings`` (a list of ``Finding``: a review's verdict)
    replaces the open ones; otherwise the findings addressed to the step are taken as
    dealt with."""
    findings = vars(output).get("findings")  # a field (getattr of a missing one is slow)
    if isinstance(findings, list) and all(isinstance(f, Finding) for f in findings):
        state.findings = list(findings)
        return
    mine = {step.role.lower(), step.id.lower()}
    state.findings = [f for f in state.findings if f.target.strip().lower() not in mine]
