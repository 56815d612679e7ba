"""A step's candidate models, one of which a router picks per run (``model: {route: ...}``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from ._base import Model, ModelRequest, ModelResponse, T

__all__ = ["RouteConfig", "RoutedModel", "answering"]


class RouteConfig(BaseModel):
    """How a step chooses its model per task.

    ``candidates``: model names or specs (each may be a fallback chain: a list),
    the first one is always-best's unless ``best`` names another. ``router``:
    ``best``, ``cheapest``, ``random``, ``rule`` (``rules``, first match wins; no
    rules: always-best), or the name of a router trained with ``swarmbus route
    train`` (until one of that name is stored, ``rules`` choose).
    ``willingness_to_pay_usd``: what one success is worth (USD): a candidate's
    utility is ``p_success - cost_usd / willingness_to_pay_usd``. ``explore``: the
    share of decisions given to another candidate at random (0-0.5), with its
    propensity recorded, so later data stays unbiased.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidates: list[Any] = Field(min_length=2, description="Model names, specs or chains.")
    router: str = Field("rule", min_length=1)
    best: str | None = Field(None, description="Always-best's candidate (default: the first).")
    rules: list[dict[str, JsonValue]] = Field(default_factory=list)
    willingness_to_pay_usd: float = Field(1.0, gt=0)
    explore: float = Field(0.0, ge=0, le=0.5)


_chosen: ContextVar[str | None] = ContextVar("swarmbus_routed_choice", default=None)


@contextmanager
def answering(name: str) -> Iterator[None]:
    """Within this block a ``RoutedModel`` answers with its candidate ``name``."""
    token = _chosen.set(name)
    try:
        yield
    finally:
        _chosen.reset(token)


class RoutedModel(Model):
    """The candidates of a routed step (``name`` -> model) and how to choose.

    The step runtime asks the configured router which candidate answers a run's
    step and calls ``complete`` within ``answering(name)``; outside one it answers
    with always-best's candidate. ``wrap`` wraps every candidate (the response
    cache keys each by its own name).
    """

    def __init__(self, config: RouteConfig, candidates: Mapping[str, Model]) -> None:
        if len(candidates) < 2:
            raise ValueError("a routed step needs two candidates or more")
        self.config = config
        self.candidates = dict(candidates)
        self.best = config.best or next(iter(self.candidates))
        if self.best not in self.candidates:
            raise ValueError(f"best: {self.best!r} is not one of the candidates "
                             f"{list(self.candidates)}")
        self.name = "route(" + " | ".join(self.candidates) + ")"

    def __repr__(self) -> str:
        return f"RoutedModel({list(self.candidates)}, router={self.config.router!r})"

    def pick(self, name: str) -> Model:
        """The candidate ``name``. Raises ``KeyError`` for another."""
        return self.candidates[name]

    def wrap(self, wrapper: Callable[[Model], Model]) -> None:
        self.candidates = {n: wrapper(m) for n, m in self.candidates.items()}

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        return await self.pick(_chosen.get() or self.best).complete(request)

    async def prepare(self) -> None:
        for model in self.candidates.values():
            await model.prepare()

    async def aclose(self) -> None:
        for model in self.candidates.values():
            await model.aclose()
