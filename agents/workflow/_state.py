"""A run's ``WorkState``: how it starts, which task inputs it lacks, and what a step's
answer does to the open findings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from swarmbus.protocols import (
    CompiledWorkflow,
    Finding,
    StepSpec,
    TaskRequest,
    WorkState,
    initial_state,
)

from .._agent import Context
from ._spans import verdict_event

__all__ = ["missing_inputs", "start_state", "update_findings"]


def missing_inputs(task: TaskRequest, wf: CompiledWorkflow) -> list[str]:
    return [k for k, spec in wf.spec.inputs.items()
            if spec.default is None and k not in task.inputs]


def start_state(task: TaskRequest, wf: CompiledWorkflow, ctx: Context[Any]) -> WorkState:
    """The state a run starts with: effective limits, the deadline counted from
    submission (the task's stamp, else the stream's time of the message)."""
    stamped = (datetime.fromtimestamp(ctx.delivery.timestamp, UTC)
               if ctx.delivery.timestamp else None)
    return initial_state(task, wf, stamped)


def update_findings(state: WorkState, step: StepSpec, output: BaseModel) -> None:
    """A step's answer with ``findings`` (a list of ``Finding``: a review's verdict)
    replaces the open ones; otherwise the findings addressed to the step are taken as
    dealt with."""
    findings = vars(output).get("findings")  # a field (getattr of a missing one is slow)
    if isinstance(findings, list) and all(isinstance(f, Finding) for f in findings):
        state.findings = list(findings)
        verdict_event(vars(output).get(step.route_on) if step.route_on else None, findings)
        return
    mine = {step.role.lower(), step.id.lower()}
    state.findings = [f for f in state.findings if f.target.strip().lower() not in mine]
