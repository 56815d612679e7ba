"""A run's ``WorkState``: how it starts, which task inputs it lacks, and what a step's
answer does to the open findings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from swarmbus.protocols import (
    DEFAULT_BUDGET_USD,
    DEFAULT_TIMEOUT_S,
    CompiledWorkflow,
    StepSpec,
    TaskRequest,
    WorkState,
)

from .._agent import Context

__all__ = ["missing_inputs", "start_state", "update_findings"]


def missing_inputs(task: TaskRequest, wf: CompiledWorkflow) -> list[str]:
    return [k for k, spec in wf.spec.inputs.items()
            if spec.default is None and k not in task.inputs]


def start_state(task: TaskRequest, wf: CompiledWorkflow, ctx: Context[Any]) -> WorkState:
    """The state a run starts with: effective limits, the deadline counted from
    submission (the task's stamp, else the stream's time of the message)."""
    limits, defaults = task.limits, wf.spec.limits
    if task.submitted_at is not None:
        submitted = task.submitted_at
    elif ctx.delivery.timestamp:
        submitted = datetime.fromtimestamp(ctx.delivery.timestamp, UTC)
    else:
        submitted = datetime.now(UTC)
    timeout = limits.timeout_s or defaults.timeout_s or DEFAULT_TIMEOUT_S
    try:
        deadline = limits.deadline or submitted + timedelta(seconds=timeout)
    except OverflowError:  # a timeout beyond the calendar: no deadline in practice
        deadline = datetime.max.replace(tzinfo=UTC)
    budget = limits.budget_usd if limits.budget_usd is not None else (
        defaults.budget_usd if defaults.budget_usd is not None else DEFAULT_BUDGET_USD)
    inputs = {k: spec.default for k, spec in wf.spec.inputs.items()
              if spec.default is not None and k not in task.inputs}
    if inputs:
        task = task.model_copy(update={"inputs": {**inputs, **task.inputs}})
    return WorkState(task=task, workflow=wf.hash, round=1, deadline=deadline,
                     budget_usd=budget, caps=limits.route_caps())


def update_findings(state: WorkState, step: StepSpec, output: BaseModel) -> None:
    """A step's answer with ``findings`` replaces the open ones (a review's verdict);
    otherwise the findings addressed to the step are taken as dealt with."""
    findings = vars(output).get("findings")  # a field (getattr of a missing one is slow)
    if isinstance(findings, list):
        state.findings = list(findings)
        return
    mine = {step.role.lower(), step.id.lower()}
    state.findings = [f for f in state.findings if f.target.strip().lower() not in mine]
