"""``StepCall``: one run of one step, as ``StepAgent.perform`` gets it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import BaseModel

from swarmbus.protocols import (
    Code,
    CompiledWorkflow,
    ConfigError,
    Provenance,
    StepSpec,
    WorkItem,
    WorkState,
)

from .._agent import Context
from .._run import current_run
from ..models import (
    ChatMessage,
    LimitReached,
    Model,
    ModelError,
    ModelRequest,
    ModelSettings,
    OutputTruncatedError,
    ProviderAuthError,
    ProviderError,
    current_ledger,
)
from ._prompt import render_system, render_work

__all__ = ["StepCall", "permanent"]


def permanent(e: BaseException) -> bool:
    """Whether a second attempt cannot fix ``e``: the error says so (``permanent``), or it
    is a config mistake, an authentication failure, or not a provider's failure."""
    flag = getattr(e, "permanent", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(e, ConfigError | ProviderAuthError) or not isinstance(e, ProviderError)


def _retry_delay(attempt: int) -> float:
    return float(min(2 ** (attempt - 1), 60))


@dataclass
class StepCall:
    """One run of one step: what ``StepAgent.perform`` gets.

    ``inputs`` are the step's input artifacts, validated into their types;
    ``previous`` is this step's own output from an earlier round (None the
    first time); ``state`` is the work so far (tools add facts to it);
    ``artifacts`` every artifact as its templates see it (references to the
    object store read). ``ask()`` renders the prompts and asks ``model`` for an
    ``output_type``, retrying transient provider failures (after the provider's
    ``Retry-After``, else ``retry_delay(attempt)`` seconds) while the run's
    deadline allows.
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
    artifacts: Mapping[str, Any] | None = None
    retry_delay: Callable[[int], float] = field(default=_retry_delay)
    item: WorkItem | None = None
    """The item of a fan-out this call runs (a ``for_each`` step's), else None."""

    def producer_role(self, artifact: str) -> str:
        """The role of the step that produces ``artifact`` ('' if none); for a join's
        output, the role of the fan-out it joins (whose items wrote the work)."""
        producer = self.workflow.producer(artifact)
        if producer is not None and producer.join is not None:  # a join unites the items'
            producer = self.workflow.steps.get(producer.join, producer)  # work: theirs
        return producer.role if producer is not None else ""

    def request(self) -> ModelRequest[BaseModel]:
        """The model request for this step (system prompt, the work so far, the type)."""
        show_report = any(isinstance(v, Code) for v in self.inputs.values()) or (
            isinstance(self.previous, Code) or issubclass(self.output_type, Code))
        user = render_work(self.step, self.state, self.inputs, self.previous,
                           show_report=show_report, all_findings=bool(self.step.routes),
                           artifacts=self.artifacts, item=self.item)
        return ModelRequest(
            system=render_system(self.step, self.state, artifacts=self.artifacts,
                                 item=self.item),
            messages=(ChatMessage(role="user", content=user),),
            output_type=self.output_type,
            settings=self.settings,
        )

    async def ask(self) -> BaseModel:
        """Ask the step's model; sets ``provenance``.

        A transient failure (rate limit, 5xx, timeout, connection) is tried again
        after the provider's ``Retry-After`` (else ``retry_delay``) for as long as the
        run's deadline allows; a cancel or the deadline cuts the wait. Raises
        ``ModelError`` for a permanent failure, ``LimitReached`` when the deadline
        comes first (``deadline_exceeded``) or the budget cut the answer short
        (``budget_exceeded``).
        """
        if self.model is None:
            raise ConfigError(
                f"no model for step {self.step.id!r} (role {self.step.role!r}): give "
                f"`roles.{self.step.role}.model` in swarm.yaml or `model:` in the workflow")
        request = self.request()
        run = current_run()
        attempt = 0
        while True:
            ledger = current_ledger()
            booked = len(ledger.records) if ledger is not None else 0
            try:
                response = await self.model.complete(request)
            except OutputTruncatedError as e:
                if e.budget_tokens is not None:
                    raise LimitReached("budget_exceeded", str(e)) from None
                raise
            except ModelError as e:
                if permanent(e) or run is None:
                    raise
                attempt += 1
                # The provider's Retry-After when it gave one, else our doubling delay.
                asked = getattr(e, "retry_after_s", None)
                delay = float(asked) if asked else self.retry_delay(attempt)
                run.last_error = f"{self.model.name}: {str(e)[:300]}"
                left = run.time_left_s()
                if left is not None and delay >= left:
                    raise LimitReached(
                        "deadline_exceeded",
                        f"the deadline passes before {self.model.name} can be tried again "
                        f"(in {delay:.1f} s; {max(left, 0):.1f} s left); last error: {e}",
                    ) from None
                self.ctx.log.warning("model failed, retrying", step=self.step.id,
                                     model=self.model.name, error=str(e)[:500],
                                     attempt=attempt, delay_s=round(delay, 3))
                await anyio.sleep(delay)
                continue
            break
        self.provenance = response.provenance
        if ledger is not None and len(ledger.records) == booked:
            # A model that does not book its calls itself (a user's own Model): book the
            # answer, so nothing it reports is left out of the spend.
            await ledger.book(response.provenance)
        return response.output
