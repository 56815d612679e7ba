"""``StepCall``: one run of one step, as ``StepAgent.perform`` gets it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from swarmbus.protocols import Code, CompiledWorkflow, ConfigError, Provenance, StepSpec, WorkState

from .._agent import Context
from ..models import ChatMessage, Model, ModelRequest, ModelSettings, current_ledger
from ._prompt import render_system, render_work

__all__ = ["StepCall"]


@dataclass
class StepCall:
    """One run of one step: what ``StepAgent.perform`` gets.

    ``inputs`` are the step's input artifacts, validated into their types;
    ``previous`` is this step's own output from an earlier round (None the
    first time); ``state`` is the work so far (tools add facts to it).
    ``ask()`` renders the prompts and asks ``model`` for an ``output_type``.
    """

    workflow: CompiledWorkflow
    step: StepSpec
    state: WorkState
    inputs: dict[str, BaseModel]
    previous: BaseModel | None
    output_type: type[BaseModel]
    model: Model | None
    settings: ModelSettings
    ctx: Context[Any]
    provenance: Provenance | None = None

    def producer_role(self, artifact: str) -> str:
        """The role of the step that produces ``artifact`` ('' if none)."""
        for s in self.workflow.spec.steps:
            if s.output == artifact:
                return s.role
        return ""

    def request(self) -> ModelRequest[BaseModel]:
        """The model request for this step (system prompt, the work so far, the type)."""
        show_report = any(isinstance(v, Code) for v in self.inputs.values()) or (
            isinstance(self.previous, Code) or issubclass(self.output_type, Code))
        user = render_work(self.step, self.state, self.inputs, self.previous,
                           show_report=show_report, all_findings=bool(self.step.routes))
        return ModelRequest(
            system=render_system(self.step, self.state),
            messages=(ChatMessage(role="user", content=user),),
            output_type=self.output_type,
            settings=self.settings,
        )

    async def ask(self) -> BaseModel:
        """Ask the step's model; sets ``provenance``. Raises ``ModelError``."""
        if self.model is None:
            raise ConfigError(
                f"no model for step {self.step.id!r} (role {self.step.role!r}): give "
                f"`roles.{self.step.role}.model` in swarm.yaml or `model:` in the workflow")
        ledger = current_ledger()
        booked = len(ledger.records) if ledger is not None else 0
        response = await self.model.complete(self.request())
        self.provenance = response.provenance
        if ledger is not None and len(ledger.records) == booked:
            # A model that does not book its calls itself (a user's own Model): book the
            # answer, so nothing it reports is left out of the spend.
            ledger.record(response.provenance)
        return response.output
