"""Token usage and cost (USD), and the provenance of a model's output."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator

__all__ = ["Provenance", "RouteDecision", "RouteScore", "Usage", "UtcDatetime"]


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A time without a zone on the wire is UTC (naive and aware times do not compare)."""


class _Data(BaseModel):
    # JSON has no infinity or NaN: ours would go out as null and not decode again.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Usage(_Data):
    """Token usage and cost, summed over model calls.

    ``input_tokens`` includes cache reads (``cached_tokens``) and cache writes
    (``cache_write_tokens``); ``output_tokens`` includes ``reasoning_tokens``.
    ``priced_cost_usd`` (USD) sums every priced call, estimated ones included;
    calls to unpriced models add nothing to it and are counted in
    ``unpriced_calls``. ``cost_usd`` is the whole cost: ``priced_cost_usd`` when
    every call had a price, ``None`` (JSON ``null``: unknown) when one did not, so
    an unknown cost never reads as a number. ``cost_usd`` is derived: on input it
    is recomputed, and data without ``priced_cost_usd`` (written before it
    existed) has its ``cost_usd`` taken as the priced sum. Budgets count
    ``priced_cost_usd``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = Field(
        0.0, ge=0, description="USD of every call; null when some call was unpriced."
    )
    priced_cost_usd: float = Field(
        0.0, ge=0, description="USD of the priced calls (a lower bound if any was unpriced)."
    )
    calls: int = Field(0, description="Provider calls made (billed), whatever their outcome.")
    unpriced_calls: int = Field(0, description="Calls to models missing from the price table.")
    estimated_calls: int = Field(
        0, description="Calls whose reply carried no usage: tokens estimated from sizes."
    )
    cache_hits: int = Field(0, description="Answers served from the response cache (no call).")

    @model_validator(mode="before")
    @classmethod
    def _whole_cost(cls, data: Any) -> Any:
        return cls.with_whole_cost(data) if isinstance(data, dict) else data

    @staticmethod
    def with_whole_cost(data: dict[str, Any]) -> dict[str, Any]:
        """``data`` (input of a model with these cost fields) with ``cost_usd`` set
        from ``priced_cost_usd`` and ``unpriced_calls``; an old ``cost_usd`` without
        ``priced_cost_usd`` is the priced sum."""
        priced = data.get("priced_cost_usd")
        if priced is None:
            priced = data.get("cost_usd") or 0.0
        whole = None if data.get("unpriced_calls") else priced
        return {**data, "priced_cost_usd": priced, "cost_usd": whole}

    def __add__(self, other: Usage) -> Usage:
        return Usage.sum((self, other))

    @classmethod
    def sum(cls, usages: Iterable[Usage]) -> Usage:
        """The field-wise sum of ``usages`` (an empty one: zero). ``priced_cost_usd``
        stays finite. Runs on every budget check, so it adds plain numbers and
        validates the result once."""
        total: dict[str, float] = dict.fromkeys(_COUNTS, 0)
        cost = 0.0
        for usage in usages:
            values = usage.__dict__
            for name in _COUNTS:
                total[name] += values[name]
            cost += values["priced_cost_usd"]
        total["priced_cost_usd"] = min(cost, sys.float_info.max)
        return cls.__pydantic_validator__.validate_python(total)  # type: ignore[no-any-return]


_COUNTS = tuple(name for name in Usage.model_fields if name not in ("cost_usd", "priced_cost_usd"))


class RouteScore(_Data):
    """One candidate as the router saw it: its chance of success (0-1), its expected
    cost (USD per call of the step; None: unknown) and the utility it was ranked by
    (``p_success - cost_usd / willingness_to_pay_usd``)."""

    model: str
    p_success: float
    cost_usd: float | None = None
    utility: float


class RouteDecision(_Data):
    """The model a router chose for a step of a run, and why.

    ``probability`` is the chance with which ``model`` was picked (exploration
    included): the propensity that makes later estimates from logged outcomes
    unbiased. ``decided_s``: seconds the decision took (a router makes no model call,
    so that is its whole price). ``features`` are what the router read, kept so the
    outcome can be learned from (``swarmbus route export``).
    """

    model: str
    router: str = Field(description="Which router chose: best, cheapest, random, rule, or "
                        "a trained router's name.")
    version: str = ""
    probability: float = Field(1.0, ge=0, le=1)
    explored: bool = False
    scores: list[RouteScore] = Field(default_factory=list)
    decided_s: float = 0.0
    features: dict[str, JsonValue] = Field(default_factory=dict)
    note: str = Field("", description="Why the decision is not the configured router's "
                      "(e.g. no trained router of that name yet: the rule router chose).")


class Provenance(_Data):
    """Who produced an output: provider, model, tokens, cost (USD), latency (s), request hash.

    One provenance covers ``calls`` provider calls (a first attempt and its repair,
    say); a cache hit covers none (``from_cache``, cost 0.0, and ``original_usage``
    says what the call that filled the cache used and cost).
    """

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = Field(None, description="None when the model is unpriced.")
    latency_s: float = 0.0
    request_hash: str = ""
    calls: int = Field(1, ge=0, description="Provider calls this covers (0 for a cache hit).")
    estimated_calls: int = Field(
        0, ge=0, description="Of those, calls without usage figures (tokens estimated)."
    )
    from_cache: bool = False
    original_usage: Usage | None = Field(
        None, description="On a cache hit: what the call that filled the cache used and cost."
    )
    tried: list[str] = Field(default_factory=list, description="Models that failed before.")
    route: RouteDecision | None = Field(
        None, description="A routed step: how its model was chosen among the candidates.")

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def estimated(self) -> bool:
        return self.estimated_calls > 0

    def usage(self) -> Usage:
        """What this output cost now (a cache hit: nothing, one hit)."""
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_tokens=self.cached_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
            priced_cost_usd=self.cost_usd or 0.0,
            calls=self.calls,
            unpriced_calls=self.calls if self.cost_usd is None else 0,
            estimated_calls=self.estimated_calls,
            cache_hits=1 if self.from_cache else 0,
        )
