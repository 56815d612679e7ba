"""Offline models for demos and tests: replies from a script or from a function."""

from __future__ import annotations

import inspect
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

import anyio
from pydantic import BaseModel, ValidationError

from swarmbus.protocols import ConfigError, Provenance

from ._base import ChatMessage, Model, ModelRequest, ModelResponse, T
from ._errors import (
    ModelError,
    OutputTruncatedError,
    OutputValidationError,
    ScriptExhaustedError,
)
from ._ledger import CallBound, current_ledger, input_token_bound
from ._output import repair_prompt, validate_output
from ._prices import Price, price_table
from ._provider import Tokens, estimate_tokens, merge_provenance, usage_of

_FREE = Price(input=0, output=0)

__all__ = ["Billed", "FunctionModel", "OfflinePrice", "Reply", "ScriptedModel", "Unmetered"]

Answer: TypeAlias = BaseModel | str | Mapping[str, Any] | BaseException


@dataclass(frozen=True, slots=True)
class Billed:
    """A reply and the usage a provider would report for it (tokens, see ``Tokens``):
    ``input_tokens`` includes ``cached_tokens`` and ``cache_write_tokens``;
    ``output_tokens`` includes ``reasoning_tokens``."""

    reply: Answer
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Unmetered:
    """A reply that carries no usage figures, like an OpenAI-compatible proxy that
    omits ``usage``: its tokens are estimated as for a real provider (``CHARS_PER_TOKEN``)."""

    reply: Answer


Reply: TypeAlias = Answer | Billed | Unmetered
"""A reply: an instance of (or dict / JSON text for) the output type, or an exception
to raise; optionally wrapped in ``Billed`` (with token counts) or ``Unmetered``."""

OfflinePrice: TypeAlias = Price | Literal["auto", "free", "unpriced"]
"""How an offline model's calls are priced: ``"auto"`` like a real provider when its
name is in the price table, else free; ``"free"`` always 0.0; ``"unpriced"`` cost
None (counted in ``unpriced_calls``); or a ``Price``."""


def _split(name: str) -> tuple[str, str]:
    provider, sep, model = name.partition(":")
    if not sep or not provider or not model:
        raise ConfigError(f"model names are 'provider:model', got {name!r}")
    return provider, model


def _to_output(reply: Answer, output_type: type[T]) -> T:
    if isinstance(reply, BaseException):
        raise reply
    if isinstance(reply, output_type):
        return reply
    if isinstance(reply, BaseModel):
        return output_type.model_validate(reply.model_dump())
    if isinstance(reply, str):
        return validate_output(output_type, reply)
    return output_type.model_validate(dict(reply))


def _as_text(reply: Answer) -> str:
    if isinstance(reply, BaseModel):
        return reply.model_dump_json()
    if isinstance(reply, str):
        return reply
    return repr(reply)


class _OfflineModel(Model):
    """Validates replies like a real provider (lenient parsing, one repair, then
    ``OutputValidationError``) and books each reply into the current ledger as one
    billed call (``before_call`` before it), priced per ``price``."""

    def __init__(
        self,
        name: str,
        *,
        latency_s: float,
        keep_requests: int | None = None,
        price: OfflinePrice = "auto",
    ) -> None:
        self.provider, self.model = _split(name)
        self.name = name
        self.latency_s = latency_s
        self.price = price
        self.requests: deque[ModelRequest[Any]] = deque(maxlen=keep_requests)
        """Every request seen (the last ``keep_requests`` if set), including repair
        requests, for assertions in tests."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @abstractmethod
    async def _reply(self, request: ModelRequest[Any]) -> Reply: ...

    def _bound_price(self) -> Price | None:
        """The price its calls are bounded with (free: zero; None: unpriced)."""
        price = self.price
        if price == "auto":
            found = price_table().get(self.name)
            return found if found is not None else _FREE
        if price == "free":
            return _FREE
        if price == "unpriced":
            return None
        return price

    def _cost(self, tokens: Tokens) -> float | None:
        price = self.price
        if price == "auto":
            found = price_table().get(self.name)
            price = found if found is not None else "free"
        if price == "free":
            return 0.0
        if price == "unpriced":
            return None
        return price.cost(
            input_tokens=tokens.input,
            output_tokens=tokens.output,
            cached_tokens=tokens.cached,
            cache_write_tokens=tokens.cache_write,
        )

    def _book(self, request: ModelRequest[Any], reply: Reply, latency_s: float) -> Provenance:
        answer = reply.reply if isinstance(reply, (Billed, Unmetered)) else reply
        if isinstance(reply, Billed):
            tokens = Tokens(
                input=reply.input_tokens,
                output=reply.output_tokens,
                cached=reply.cached_tokens,
                cache_write=reply.cache_write_tokens,
                reasoning=reply.reasoning_tokens,
            )
        elif isinstance(reply, Unmetered):
            tokens = estimate_tokens(request, request.messages, _as_text(answer))
        else:
            tokens = Tokens()
        return Provenance(
            provider=self.provider,
            model=self.model,
            input_tokens=tokens.input,
            output_tokens=tokens.output,
            cached_tokens=tokens.cached,
            cache_write_tokens=tokens.cache_write,
            reasoning_tokens=tokens.reasoning,
            cost_usd=self._cost(tokens),
            latency_s=latency_s,
            request_hash=request.request_hash(self.name),
            estimated_calls=1 if isinstance(reply, Unmetered) else 0,
        )

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        started = time.perf_counter()
        current = request
        spent: list[Provenance] = []
        ledger = current_ledger()
        for attempt in (1, 2):
            lowered: int | None = None
            if ledger is not None:
                price = self._bound_price()
                free = price is not None and not (price.input or price.output)
                lowered = ledger.before_call(self.name, None if free else CallBound(
                    price, input_token_bound(current), current.settings.max_tokens))
            self.requests.append(current)
            call_started = time.perf_counter()
            if self.latency_s > 0:
                await anyio.sleep(self.latency_s)
            try:
                reply = await self._reply(current)
            except ModelError as exc:
                exc.usage = usage_of(spent) + exc.usage
                raise
            answer = reply.reply if isinstance(reply, (Billed, Unmetered)) else reply
            cut = lowered is not None and isinstance(reply, Billed) and \
                reply.output_tokens > lowered
            if cut:  # as a provider does: the output stops at the lowered max_tokens
                assert isinstance(reply, Billed) and lowered is not None
                reply = replace(reply, output_tokens=lowered)
            if not isinstance(answer, BaseException) or isinstance(reply, Billed):
                booked = self._book(current, reply, time.perf_counter() - call_started)
                spent.append(booked)
                if ledger is not None:
                    await ledger.book(booked)
            if cut:
                raise OutputTruncatedError(
                    f"{self.name}: the reply was cut at {lowered} tokens (max_tokens lowered "
                    "to fit the budget left)", model=self.name, usage=usage_of(spent),
                    budget_tokens=lowered)
            try:
                output = _to_output(answer, request.output_type)
                break
            except ModelError as exc:
                exc.usage = usage_of(spent) + exc.usage
                raise
            except ValidationError as exc:
                if attempt == 2:
                    raise OutputValidationError(
                        f"{self.name}: reply does not fit {request.output_type.__name__} "
                        f"after one repair attempt: {exc}",
                        model=self.name,
                        raw_output=_as_text(answer),
                        usage=usage_of(spent),
                    ) from exc
                current = replace(
                    current,
                    messages=(
                        *current.messages,
                        ChatMessage(role="assistant", content=_as_text(answer)),
                        ChatMessage(role="user", content=repair_prompt(exc)),
                    ),
                )
        provenance = merge_provenance(
            spent,
            provider=self.provider,
            model=self.model,
            latency_s=time.perf_counter() - started,
            request_hash=request.request_hash(self.name),
        )
        return ModelResponse(output=output, provenance=provenance)


class ScriptedModel(_OfflineModel):
    """Answers with ``replies`` in order; for demos and for testing your own agents.

    A reply is an instance of the output type, a dict or JSON text for it, or
    an exception to raise (to test fallback and error paths). An invalid reply
    is treated like a real model's invalid output: the next reply is the repair
    attempt. Asking for more replies than given raises ``ScriptExhaustedError``.

    Billing: each reply is one call, booked into the current ledger like a
    provider's (an exception reply is not billed unless wrapped in ``Billed``).
    A plain reply reports zero tokens; ``Billed(reply, input_tokens=...,
    output_tokens=...)`` reports what you give; ``Unmetered(reply)`` reports
    nothing, so its tokens are estimated. ``price`` (see ``OfflinePrice``)
    turns tokens into USD: by default like a real provider when ``name`` is in
    the price table (``"openai:gpt-4o"``), free otherwise (``"scripted:model"``).
    """

    def __init__(
        self,
        replies: Iterable[Reply],
        *,
        name: str = "scripted:model",
        latency_s: float = 0.0,
        price: OfflinePrice = "auto",
    ) -> None:
        super().__init__(name, latency_s=latency_s, price=price)
        self._replies: deque[Reply] = deque(replies)
        self._given = len(self._replies)

    @property
    def remaining(self) -> int:
        return len(self._replies)

    async def _reply(self, request: ModelRequest[Any]) -> Reply:
        if not self._replies:
            raise ScriptExhaustedError(
                f"{self.name}: all {self._given} scripted replies used; call "
                f"{len(self.requests)} wanted one more "
                f"({request.output_type.__name__}). Add replies to the script.",
                model=self.name,
            )
        return self._replies.popleft()


ReplyFunction: TypeAlias = Callable[[ModelRequest[Any]], Reply | Awaitable[Reply]]


class FunctionModel(_OfflineModel):
    """Answers with ``function(request)`` (sync or async), after ``latency_s`` of simulated delay.

    The function sees the whole request (system prompt, messages, output type),
    so it can write a reply that depends on it, or raise to simulate a failure.
    A repair request carries the validation error as its last user message.
    A model that runs in a long-lived process (``swarmbus up --offline``) should
    bound ``keep_requests``, or ``requests`` grows with every call. Billing as
    for ``ScriptedModel``: return ``Billed(...)`` or ``Unmetered(...)`` to
    simulate usage, and set ``price``.
    """

    def __init__(
        self,
        function: ReplyFunction,
        *,
        name: str = "function:model",
        latency_s: float = 0.0,
        keep_requests: int | None = None,
        price: OfflinePrice = "auto",
    ) -> None:
        super().__init__(name, latency_s=latency_s, keep_requests=keep_requests, price=price)
        self._function = function

    async def _reply(self, request: ModelRequest[Any]) -> Reply:
        result = self._function(request)
        if inspect.isawaitable(result):
            result = await result
        return result
