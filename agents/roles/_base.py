"""What the three roles share: limits checked before every model call, spend
accounting, provenance on every output, and ending a workflow cleanly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, NoReturn, TypeVar

from pydantic import BaseModel

from swarmbus.bus import Bus, Retry, WatchedKeys, cancel_flags
from swarmbus.protocols import (
    Provenance,
    TaskResult,
    TaskStatus,
    Usage,
    WorkState,
)

from .._agent import Agent, Context
from ..models import (
    CachedModel,
    ChatMessage,
    Model,
    ModelError,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ProviderError,
)
from ._prompts import render_state, system_prompt

__all__ = ["CACHE_BUCKET", "RoleAgent", "WorkflowEnded"]

T = TypeVar("T", bound=BaseModel)


CACHE_BUCKET = "responses"


class WorkflowEnded(Exception):
    """Raised inside a role once it has published the workflow's final result."""


class RoleAgent(Agent):
    """Base of Architect, Coder and Reviewer: one model, typed output, limits.

    ``cache_ttl_s`` turns on the response cache (a JetStream key-value bucket
    keyed by a hash of model and request), so a redelivered message does not
    pay the provider twice. ``None`` disables it.
    """

    role: ClassVar[str]

    def __init__(
        self,
        model: Model,
        *,
        cache_ttl_s: float | None = 7 * 24 * 3600,
        settings: ModelSettings | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", self.role)
        super().__init__(**kwargs)
        self.model = model
        self.model_settings = settings or ModelSettings()
        self.cache_ttl_s = cache_ttl_s
        self._cancel: WatchedKeys | None = None

    @property
    def model_name(self) -> str:
        return self.model.name

    async def setup(self, bus: Bus) -> None:
        self._cancel = await WatchedKeys(bus, await cancel_flags(bus)).start()
        if self.cache_ttl_s is not None and not isinstance(self.model, CachedModel):
            store = await bus.key_value(CACHE_BUCKET, ttl_s=self.cache_ttl_s)
            self.model = CachedModel(self.model, store, ttl_s=self.cache_ttl_s)

    async def aclose(self) -> None:
        if self._cancel is not None:
            await self._cancel.aclose()
        await self.model.aclose()

    async def ask(
        self, ctx: Context[Any], state: WorkState, output_type: type[T]
    ) -> tuple[T, Provenance]:
        """Check the limits, call the model, add the call to ``state.spend``.

        Ends the workflow (publishes the result, raises ``WorkflowEnded``) when a
        limit is hit or the model fails for good; raises ``Retry`` on a transient
        provider failure while deliveries remain.
        """
        await self.check_limits(ctx, state)
        request = ModelRequest(
            system=system_prompt(self.role),
            messages=(ChatMessage(role="user", content=render_state(state, for_role=self.role)),),
            output_type=output_type,
            settings=self.model_settings,
        )
        try:
            response: ModelResponse[T] = await self.model.complete(request)
        except ProviderError as e:
            if ctx.deliveries < self.consumer.max_deliver - 1:
                raise Retry(f"{self.model.name}: {e}") from e
            await self.finish(ctx, state, "failed", f"{self.role}: model unavailable: {e}")
        except ModelError as e:
            await self.finish(ctx, state, "failed", f"{self.role}: {e}")
        prov = response.provenance
        usage = response.usage
        if prov.from_cache and prov.original_usage is not None and ctx.deliveries > 1:
            # A redelivery: the attempt that paid for this answer never got to record it.
            usage = prov.original_usage
        state.spend[self.role] = state.spend.get(self.role, Usage()) + usage
        ctx.log.info("model answered", model=prov.name, cost_usd=prov.cost_usd,
                     latency_s=round(prov.latency_s, 3), from_cache=prov.from_cache)
        return response.output, prov

    async def check_limits(self, ctx: Context[Any], state: WorkState) -> None:
        limits = state.task.limits
        if self._cancel is not None and await self._cancel.contains(ctx.workflow_id):
            await self.finish(ctx, state, "cancelled", "cancelled on request")
        if state.deadline is not None and datetime.now(UTC) >= state.deadline:
            await self.finish(ctx, state, "deadline_exceeded",
                              f"deadline {state.deadline.isoformat()} passed")
        spent = state.total.cost_usd
        if spent >= limits.budget_usd:
            await self.finish(ctx, state, "budget_exceeded",
                              f"spent ${spent:.4f} of ${limits.budget_usd:.4f}")

    async def finish(
        self, ctx: Context[Any], state: WorkState, status: TaskStatus, reason: str,
        *, model: str | None = None,
    ) -> NoReturn:
        """Publish the final result with the best attempt so far, then stop handling."""
        await ctx.publish(result_from(state, status, reason), round=state.round, model=model)
        ctx.log.info("workflow ended", status=status, reason=reason)
        raise WorkflowEnded(status)


def result_from(state: WorkState, status: TaskStatus, reason: str) -> TaskResult:
    return TaskResult(
        status=status,
        reason=reason,
        design=state.design,
        code=state.code,
        findings=[] if status == "approved" else state.findings,
        test_report=state.test_report,
        rounds=state.round,
        code_revisions=state.code_revisions,
        design_revisions=state.design_revisions,
        spend=state.spend,
        total=state.total,
    )
