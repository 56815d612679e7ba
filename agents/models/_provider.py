"""What every real provider shares: the repair loop, booking into the ledger, pricing,
token estimates, provenance, keys, SDK presence, and error mapping."""

from __future__ import annotations

import importlib.util
import math
import os
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, SecretStr, ValidationError

from swarmbus.bus import register_secret
from swarmbus.protocols import Provenance, Usage

from ._base import ChatMessage, Model, ModelRequest, ModelResponse, T
from ._errors import (
    MissingAPIKeyError,
    MissingSDKError,
    ModelError,
    OutputTruncatedError,
    OutputValidationError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderEmptyReplyError,
    ProviderError,
    ProviderRateLimitError,
    ProviderServerError,
    ProviderTimeoutError,
    RefusalError,
)
from ._guard import check_real_call_allowed
from ._ledger import current_ledger
from ._output import describe, repair_prompt, validate_output
from ._prices import Price, price_table

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_RETRIES",
    "ApiKey",
    "ProviderModel",
    "RawReply",
    "Tokens",
    "error_for_status",
    "estimate_tokens",
    "forbid_extra",
    "merge_provenance",
    "no_retry_on_auth",
    "parse_retry_after",
    "require_sdk",
    "resolve_api_key",
    "schema_name",
    "usage_of",
]

DEFAULT_MAX_RETRIES = 1
_MAX_ERROR_CHARS = 2000

CHARS_PER_TOKEN = 4
"""The estimate for a reply without usage figures: one token per 4 characters of
text, rounded up (OpenAI's rule of thumb for English text, "What are tokens and how
to count them", help.openai.com; Google's Gemini docs give the same ratio)."""


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
    ``refusal``, the reason); ``empty`` (a 200 with nothing in it).
    """

    text: str
    tokens: Tokens | None = None
    stop: Literal["ok", "length", "refusal", "empty"] = "ok"
    refusal: str = ""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key and where it came from (a variable's name or a file path), for messages."""

    value: SecretStr
    source: str


def require_sdk(module: str, *, provider: str, extra: str) -> None:
    """Raise ``MissingSDKError`` with the ``pip install`` line if ``module`` is not
    installed. Looks the module up without importing it (importing an SDK takes seconds)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingSDKError(
            f"the {provider} provider needs the {module!r} package, which is not installed: "
            f"pip install 'swarmbus[{extra}]'"
        )


def resolve_api_key(
    *,
    provider: str,
    env: str | None,
    file: str | os.PathLike[str] | None,
    default_envs: tuple[str, ...],
    required: bool,
) -> ApiKey | None:
    """The key from ``file``, else ``env``, else the provider's usual variables.

    Keys never come from config text itself, so a swarm.yaml can be shared. Every
    key found is registered with ``swarmbus.bus.register_secret`` (so it is
    scrubbed from every text swarmbus writes). Raises ``MissingAPIKeyError`` when
    ``file`` is unreadable or empty, or no key is found and one is ``required``.
    """
    if file is not None:
        try:
            key = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise MissingAPIKeyError(
                f"cannot read the {provider} API key file {os.fspath(file)!r}: {exc.strerror}"
            ) from None
        if key:
            register_secret(key, source=os.fspath(file))
            return ApiKey(SecretStr(key), os.fspath(file))
        raise MissingAPIKeyError(f"the {provider} API key file {os.fspath(file)!r} is empty")
    names = (env,) if env else default_envs
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            register_secret(value, source=name)
            return ApiKey(SecretStr(value), name)
    if required:
        raise MissingAPIKeyError(
            f"no API key for {provider}: set {' or '.join(names)} in the environment, "
            "or give api_key_env / api_key_file in the model spec"
        )
    return None


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP
    date), as the SDKs read them; None when absent or unreadable."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / scale
        except ValueError:
            if name == "retry-after":
                import email.utils

                try:
                    when = email.utils.parsedate_to_datetime(raw)
                except (TypeError, ValueError):
                    return None
                return max(0.0, when.timestamp() - time.time())
            continue
        if math.isfinite(value) and value >= 0:
            return value
    return None


def error_for_status(
    status: int,
    message: str,
    *,
    model: str,
    retry_after_s: float | None = None,
    key_source: str | None = None,
) -> ProviderError:
    """Map an HTTP status to the matching ``ProviderError`` subclass.

    401/403: ``ProviderAuthError`` naming ``key_source``; 400/404/413/422:
    ``ProviderBadRequestError``; 429: rate limit; 408/504: timeout; 5xx: server;
    409/425: transient ``ProviderError``; any other: permanent ``ProviderError``.
    """
    provider = model.partition(":")[0]
    if status in (401, 403):
        where = f" with the key from {key_source}" if key_source else ""
        text = (
            f"{model}: HTTP {status}: {provider} refused the credentials{where} "
            f"(permanent, not retried): {message}"
        )
        return ProviderAuthError(text[:_MAX_ERROR_CHARS], model=model, status_code=status)
    text = f"{model}: HTTP {status}: {message}"[:_MAX_ERROR_CHARS]
    kwargs: dict[str, Any] = {"model": model, "status_code": status, "retry_after_s": retry_after_s}
    if status == 429:
        return ProviderRateLimitError(text, **kwargs)
    if status in (408, 504):
        return ProviderTimeoutError(text, **kwargs)
    if status >= 500:
        return ProviderServerError(text, **kwargs)
    if status in (400, 404, 413, 422):
        return ProviderBadRequestError(text, **kwargs)
    return ProviderError(text, permanent=status not in (409, 425), **kwargs)


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
    total = Usage()
    for p in calls:
        total = total + p.usage()
    return total


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
    ) -> None:
        self.provider = provider
        self.model = model
        self.name = f"{provider}:{model}"
        self._price = price
        self._timeout_s = timeout_s
        self._prepared = False
        self._key_source: str | None = None

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

    def _timeout(self, request: ModelRequest[Any]) -> float:
        return self._timeout_s if self._timeout_s is not None else request.settings.timeout_s

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
    ) -> RawReply:
        check_real_call_allowed(self.name)
        ledger = current_ledger()
        if ledger is not None:
            ledger.before_call(self.name)  # raises to stop; propagates unchanged
        started = time.perf_counter()
        try:
            raw = await self._call(request, history, self._timeout(request))
        except ModelError as exc:
            exc.usage = usage_of(spent) + exc.usage
            raise
        except Exception as exc:
            mapped = self._map_error(exc)
            if mapped is None:
                raise
            mapped.usage = usage_of(spent)
            # Not chained: SDK errors hold the request (and its key header) and the raw body.
            raise mapped from None
        booked = self._booked(request, history, raw, time.perf_counter() - started)
        if booked is not None:
            spent.append(booked)
            if ledger is not None:
                ledger.record(booked)
        return raw

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        await self.prepare()
        started = time.perf_counter()
        history = list(request.messages)
        spent: list[Provenance] = []
        output: T | None = None
        for attempt in (1, 2):
            raw = await self._call_once(request, history, spent)
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
                        f"{describe(exc)[:_MAX_ERROR_CHARS]}",
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


async def no_retry_on_auth(response: Any) -> None:
    """An httpx response hook: a 401/403 is never retried by the SDK, even when a proxy
    sends ``x-should-retry: true`` (which the OpenAI and Anthropic SDKs obey)."""
    if response.status_code in (401, 403) and "x-should-retry" in response.headers:
        del response.headers["x-should-retry"]
