"""A chain of models: on provider failures (and, if configured, output errors) the next
one answers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from swarmbus.protocols import ConfigError

from ._base import Model, ModelRequest, ModelResponse, T
from ._errors import (
    FallbackExhaustedError,
    ModelError,
    OutputTruncatedError,
    OutputValidationError,
    ProviderError,
    RefusalError,
)
from ._ledger import current_ledger

__all__ = ["OUTPUT_ERRORS", "FallbackModel"]

OUTPUT_ERRORS: tuple[type[ModelError], ...] = (
    OutputValidationError,
    OutputTruncatedError,
    RefusalError,
)
"""The model's own answer was unusable: invalid (after repair), cut off, or refused."""


@dataclass(slots=True)
class _Health:
    failures: int = 0
    cooled_until: float = 0.0


class FallbackModel(Model):
    """Tries ``models`` in order; moves on when one raises one of ``fallback_on``.

    A model that fails ``failures_before_cooldown`` times in a row is skipped
    for ``cooldown_s`` seconds, then tried again (one success resets it). If
    every model is cooling down, all are tried anyway rather than failing
    without a call. The answer's provenance names the model that answered and
    lists in ``tried`` the ones that failed before it. When all fail,
    ``FallbackExhaustedError`` (a ``ProviderError``) carries each error.

    By default only ``ProviderError`` (rate limits, timeouts, 5xx, empty
    replies, connection and auth failures) moves on: an invalid output or a
    refusal is the model's answer. Pass ``fallback_on=(ProviderError,
    *OUTPUT_ERRORS)`` (``FallbackSpec(on=["provider", "output"])`` in config) to
    move on after those too.

    Money: every call a member made is booked into the current ledger by that
    member as it happens, so the calls made before the chain moved on are in
    the spend; ``FallbackExhaustedError.usage`` is their sum. Whatever the
    ledger's check raises before a call (budget, deadline, cancel) is never
    caught here: it stops the chain before the next model's request.
    ``prepare`` and ``aclose`` apply to every model of the chain.
    """

    def __init__(
        self,
        models: Sequence[Model],
        *,
        cooldown_s: float = 60.0,
        failures_before_cooldown: int = 2,
        fallback_on: tuple[type[ModelError], ...] = (ProviderError,),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not models:
            raise ConfigError("a fallback chain needs at least one model")
        if failures_before_cooldown < 1 or cooldown_s < 0:
            raise ConfigError("failures_before_cooldown must be >= 1 and cooldown_s >= 0")
        self.models = tuple(models)
        self.name = "fallback:" + ",".join(m.name for m in self.models)
        self.cooldown_s = cooldown_s
        self.failures_before_cooldown = failures_before_cooldown
        self.fallback_on = fallback_on
        self._clock = clock
        self._health = [_Health() for _ in self.models]

    def __repr__(self) -> str:
        return f"FallbackModel({[m.name for m in self.models]!r})"

    def cooling_down(self) -> list[str]:
        """Names of the models currently skipped."""
        now = self._clock()
        pairs = zip(self.models, self._health, strict=True)
        return [m.name for m, h in pairs if h.cooled_until > now]

    def _order(self) -> list[int]:
        now = self._clock()
        ready = [i for i, h in enumerate(self._health) if h.cooled_until <= now]
        if ready:
            return ready
        return sorted(range(len(self.models)), key=lambda i: self._health[i].cooled_until)

    async def prepare(self) -> None:
        for model in self.models:
            await model.prepare()

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        errors: list[ModelError] = []
        tried: list[str] = []
        for index in self._order():
            model, health = self.models[index], self._health[index]
            try:
                response = await model.complete(request)
            except self.fallback_on as exc:
                ledger = current_ledger()
                if ledger is not None and ledger.stopped is exc:
                    raise  # the ledger stopped the call: not a model failure
                errors.append(exc)
                tried.append(model.name)
                health.failures += 1
                if health.failures >= self.failures_before_cooldown:
                    health.cooled_until = self._clock() + self.cooldown_s
                continue
            health.failures, health.cooled_until = 0, 0.0
            provenance = response.provenance.model_copy(
                update={"tried": [*tried, *response.provenance.tried]}
            )
            return replace(response, provenance=provenance)
        summary = "; ".join(f"{name}: {err}" for name, err in zip(tried, errors, strict=True))
        raise FallbackExhaustedError(
            f"every model of the chain failed: {summary}", model=self.name, errors=errors
        )

    async def aclose(self) -> None:
        """Close every model, even if one fails to close (the first error is raised)."""
        failures: list[Exception] = []
        for model in self.models:
            try:
                await model.aclose()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
