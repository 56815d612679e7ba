"""What every real provider shares: the repair loop, booking into the ledger, pricing,
token estimates, provenance, keys, SDK presence, and error mapping."""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ValidationError

from swarmbus.bus import model_call_failed
from swarmbus.protocols import Provenance, Usage

from ._base import ChatMessage, Model, ModelRequest, ModelResponse, T
from ._errors import (
    MissingSDKError,
    ModelError,
    OutputTruncatedError,
    OutputValidationError,
    ProviderEmptyReplyError,
    ProviderError,
    RefusalError,
)
from ._guard import check_real_call_allowed
from ._ledger import CallBound, current_ledger, input_token_bound
from ._output import describe, repair_prompt, validate_output
from ._prices import Price, is_priced, price_table
from ._vendor import MAX_ERROR_CHARS

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_RETRIES",
    "PromptCache",
    "ProviderModel",
    "RawReply",
    "Tokens",
    "estimate_tokens",
    "forbid_extra",
    "merge_provenance",
    "schema_name",
    "usage_of",
]

DEFAULT_MAX_RETRIES = 0
"""The SDKs' own retries: none. A step retries transient failures itself, after the
provider's Retry-After, for as long as its run's deadline allows, where a cancel and the
deadline can reach the wait and the last error is named (an SDK's wait is silent)."""

CHARS_PER_TOKEN = 4
"""The estimate for a reply without usage figures: one token per 4 characters of
text, rounded up (OpenAI's rule of thumb for English text, "What are tokens and how
to count them", help.openai.com; Google's Gemini docs give the same ratio)."""


PromptCache = Literal["5m", "1h", "off"]
"""How a model uses its provider's prompt cache. ``5m`` (the default) and ``1h``:
Anthropic's breakpoints write entries that live that long (writes bill 1.25x / 2x the
input rate, reads 0.1x); OpenAI requests carry ``prompt_cache_key``; Gemini relies on
its implicit cache, and where that misses a repeated long prefix, creates explicit
caches that live that long (see ``GoogleModel``). ``off``: no breakpoint, no key, no
explicit cache (Gemini's and OpenAI's automatic caches still apply on the provider's
side; they cannot be switched off)."""


@dataclass(frozen=True, slots=True)
class Tokens:
    """One call's usage. ``input`` includes ``cached`` (cache reads) and ``cache_write``
    (of which ``cache_write_1h`` at the 1-hour rate); ``output`` includes ``reasoning``."""

    input: int = 0
    output: int = 0
    cached: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    reasoning: int = 0


@dataclass(frozen=True, slots=True)
class RawReply:
    """One provider answer, normalised. ``tokens`` None: the reply carried no usage.

    ``stop``: ``ok``; ``length`` (cut at the token limit); ``refusal`` (with
    ``refusal``, the reason); ``empty`` (a 200 with nothing in it). ``finish``: the
    vendor's own word for why it stopped (``stop``, ``end_turn``, ``STOP``...; '' unknown).
    """

    text: str
    tokens: Tokens | None = None
    stop: Literal["ok", "length", "refusal", "empty"] = "ok"
    refusal: str = ""
    finish: str = ""


def estimate_tokens(
    request: ModelRequest[Any], history: Sequence[ChatMessage], text: str
) -> Tokens:
    """Tokens of a call whose reply carried no usage: ``ceil(chars / CHARS_PER_TOKEN)``
    of what was sent (system prompt, messages, output schema) and of the reply text."""
    import json

    sent = len(request.system) + sum(len(m.content) for m in history)
    sent += len(json.dumps(request.output_type.model_json_schema()))
    return Tokens(
        input=math.ceil(sent / CHARS_PER_TOKEN), output=math.ceil(len(text) / CHARS_PER_TOKEN)
    )


def merge_provenance(
    calls: Sequence[Provenance], *, provider: str, model: str, latency_s: float, request_hash: str
) -> Provenance:
    """One provenance covering several calls to one model (a first attempt and its repair)."""
    if len(calls) == 1 and (calls[0].provider, calls[0].model) == (provider, model):
        return calls[0].model_copy(update={"latency_s": latency_s, "request_hash": request_hash})
    costs = [p.cost_usd for p in calls]
    return Provenance(
        provider=provider,
        model=model,
        input_tokens=sum(p.input_tokens for p in calls),
        output_tokens=sum(p.output_tokens for p in calls),
        cached_tokens=sum(p.cached_tokens for p in calls),
        cache_write_tokens=sum(p.cache_write_tokens for p in calls),
        reasoning_tokens=sum(p.reasoning_tokens for p in calls),
        cost_usd=None if None in costs else sum(c or 0.0 for c in costs),
        latency_s=latency_s,
        request_hash=request_hash,
        calls=sum(p.calls for p in calls),
        estimated_calls=sum(p.estimated_calls for p in calls),
    )


def usage_of(calls: Sequence[Provenance]) -> Usage:
    return Usage.sum(p.usage() for p in calls)


_UNREADABLE = (AttributeError, TypeError, KeyError, IndexError, ValueError)
"""What an SDK raises while reading a 200 body that is not its vendor's response."""


class ProviderModel(Model):
    """A real provider behind an official SDK.

    Subclasses implement ``_import_sdk`` / ``_create_client`` (run by ``prepare``),
    ``_call`` (one request, normalised) and ``_map_error`` (SDK exception ->
    ``ModelError``). This class runs the repair loop; checks the real-call switch
    and ``ledger.before_call`` before every call; books every billed answer into
    the current ledger right away; prices usage (an answer without usage is
    estimated, see ``CHARS_PER_TOKEN``); and puts the usage of the calls an
    error consumed on the error.
    """

    provider: str
    model: str
    sdk_module: str = ""
    extra: str = ""

    def __init__(
        self,
        provider: str,
        model: str,
        *,
        price: Price | None = None,
        timeout_s: float | None = None,
        prompt_cache: PromptCache = "5m",
    ) -> None:
        self.provider = provider
        self.prompt_cache: PromptCache = prompt_cache
        self.model = model
        self.name = f"{provider}:{model}"
        self._price = price
        self._timeout_s = timeout_s
        self._prepared = False
        self._key_source: str | None = None

    @property
    def priced(self) -> bool:
        """Whether its calls get a cost: a ``price`` of its own, or the price table's."""
        return self._price is not None or is_priced(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @abstractmethod
    def _import_sdk(self) -> None:
        """Import the SDK (runs in a worker thread: imports take up to seconds)."""

    @abstractmethod
    def _create_client(self) -> None:
        """Create the SDK client (no network)."""

    @abstractmethod
    async def _call(
        self, request: ModelRequest[Any], history: list[ChatMessage], timeout_s: float
    ) -> RawReply: ...

    @abstractmethod
    def _map_error(self, exc: Exception) -> ModelError | None:
        """The ``ModelError`` for an SDK exception, or None to let it propagate."""

    async def prepare(self) -> None:
        """Import the SDK (in a worker thread) and create the client; no network call.
        Idempotent and safe to call concurrently; ``complete`` calls it if needed.
        Raises ``MissingSDKError`` if the SDK is installed but cannot be imported."""
        if self._prepared:
            return
        try:
            await anyio.to_thread.run_sync(self._import_sdk)
        except ImportError as exc:
            raise MissingSDKError(
                f"{self.name}: the {self.sdk_module!r} package cannot be imported ({exc}): "
                f"pip install 'swarmbus[{self.extra}]'"
            ) from None
        if not self._prepared:
            self._create_client()
            self._prepared = True

    def _bound_price(self) -> Price | None:
        """The price a call's worst case is bounded with: cache writes are possible only
        at the lifetime this model's breakpoints ask for (``prompt_cache``)."""
        price = self.price()
        if price is None or self.prompt_cache == "1h":
            return price
        if self.prompt_cache == "off":
            return price.model_copy(update={"cache_write": None, "cache_write_1h": None})
        return price.model_copy(update={"cache_write_1h": None})

    def _timeout(self, request: ModelRequest[Any]) -> float:
        return self._timeout_s if self._timeout_s is not None else request.settings.timeout_s

    def price(self) -> Price | None:
        """Its price: its own ``price``, else the price table's (None: unpriced)."""
        return self._price if self._price is not None else price_table().get(self.name)

    def _cost(self, tokens: Tokens) -> float | None:
        counts = {
            "input_tokens": tokens.input,
            "output_tokens": tokens.output,
            "cached_tokens": tokens.cached,
            "cache_write_tokens": tokens.cache_write,
            "cache_write_1h_tokens": tokens.cache_write_1h,
        }
        if self._price is not None:
            return self._price.cost(**counts)
        return price_table().cost(self.name, **counts)

    def _booked(
        self,
        request: ModelRequest[Any],
        history: list[ChatMessage],
        raw: RawReply,
        latency_s: float,
    ) -> Provenance | None:
        """The provenance of one billed call, or None when nothing says it was billed."""
        tokens, estimated = raw.tokens, 0
        if tokens is None:
            if raw.stop == "empty":
                return None
            tokens, estimated = estimate_tokens(request, history, raw.text or raw.refusal), 1
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
            calls=1,
            estimated_calls=estimated,
        )

    async def _call_once(
        self, request: ModelRequest[Any], history: list[ChatMessage], spent: list[Provenance]
    ) -> tuple[RawReply, int | None]:
        """One call. Returns the reply and the ``max_tokens`` it was lowered to so that
        its worst case fits the budget left (None: not lowered)."""
        check_real_call_allowed(self.name)
        ledger = current_ledger()
        lowered: int | None = None
        sent = request
        if ledger is not None:
            bound = CallBound(self._bound_price(), input_token_bound(request, history),
                              request.settings.max_tokens)
            lowered = ledger.before_call(self.name, bound)  # raises to stop; unchanged
            if lowered is not None:
                sent = replace(request, settings=request.settings.model_copy(
                    update={"max_tokens": lowered}))
        started = time.perf_counter()
        try:
            raw = await self._call(sent, history, self._timeout(request))
        except ModelError as exc:
            exc.usage = usage_of(spent) + exc.usage
            model_call_failed(self.provider, self.model, time.perf_counter() - started,
                              type(exc).__name__)
            raise
        except Exception as exc:
            mapped = self._map_error(exc)
            if mapped is None and isinstance(exc, _UNREADABLE):
                # A 200 whose body is not the vendor's response (an HTML page from a
                # gateway, text that is not JSON): the SDK fails while reading it. A
                # glitch to retry, not a bug to crash the handler on.
                mapped = ProviderError(
                    f"{self.name}: the reply could not be read as a {self.provider} response "
                    f"({type(exc).__name__}: {str(exc)[:200]}); a provider or proxy glitch",
                    model=self.name, permanent=False)
            if mapped is None:
                raise
            mapped.usage = usage_of(spent)
            model_call_failed(self.provider, self.model, time.perf_counter() - started,
                              type(mapped).__name__)
            # Not chained: SDK errors hold the request (and its key header) and the raw body.
            raise mapped from None
        booked = self._booked(request, history, raw, time.perf_counter() - started)
        if booked is not None:
            spent.append(booked)
            if ledger is not None:
                await ledger.book(booked)
        return raw, lowered

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        await self.prepare()
        started = time.perf_counter()
        history = list(request.messages)
        spent: list[Provenance] = []
        output: T | None = None
        for attempt in (1, 2):
            raw, lowered = await self._call_once(request, history, spent)
            if raw.stop == "empty":
                raise ProviderEmptyReplyError(
                    f"{self.name} answered with nothing (no choices or candidates); "
                    "a provider glitch, retry later",
                    model=self.name,
                    usage=usage_of(spent),
                )
            if raw.stop == "refusal":
                raise RefusalError(
                    f"{self.name} refused: {raw.refusal or 'no reason given'}",
                    model=self.name,
                    reason=raw.refusal,
                    usage=usage_of(spent),
                )
            if raw.stop == "length":
                if lowered is not None:
                    raise OutputTruncatedError(
                        f"{self.name} stopped at max_tokens={lowered}, lowered from "
                        f"{request.settings.max_tokens} to fit the budget left",
                        model=self.name, usage=usage_of(spent), budget_tokens=lowered)
                raise OutputTruncatedError(
                    f"{self.name} stopped at the token limit "
                    f"(max_tokens={request.settings.max_tokens}); raise it or ask for less",
                    model=self.name,
                    usage=usage_of(spent),
                )
            try:
                output = validate_output(request.output_type, raw.text)
                break
            except ValidationError as exc:
                if attempt == 2:
                    raise OutputValidationError(
                        f"{self.name} returned output that does not fit "
                        f"{request.output_type.__name__}, even after one repair attempt:\n"
                        f"{describe(exc)[:MAX_ERROR_CHARS]}",
                        model=self.name,
                        raw_output=raw.text,
                        usage=usage_of(spent),
                    ) from None
                history += [
                    ChatMessage(role="assistant", content=raw.text or "(empty reply)"),
                    ChatMessage(role="user", content=repair_prompt(exc)),
                ]
        assert output is not None
        return ModelResponse(
            output=output,
            finish_reasons=(raw.finish,) if raw.finish else (),
            provenance=merge_provenance(
                spent,
                provider=self.provider,
                model=self.model,
                latency_s=time.perf_counter() - started,
                request_hash=request.request_hash(self.name),
            ),
        )


def schema_name(output_type: type[BaseModel]) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in output_type.__name__)
    return cleaned[:64] or "output"


def forbid_extra(schema: Any) -> Any:
    """Close every object schema (``additionalProperties: false``), as strict modes require.

    Our message models allow extra fields when *reading* peers' messages; a
    model writing one must not invent fields.
    """
    if isinstance(schema, dict):
        out = {k: forbid_extra(v) for k, v in schema.items()}
        if out.get("type") == "object":
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [forbid_extra(v) for v in schema]
    return schema
