"""Google Gemini through google-genai, with ``response_schema``."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr

from swarmbus.protocols import ConfigError, Provenance

from ._base import ChatMessage, ModelRequest
from ._errors import ModelError, ProviderError, ProviderTimeoutError
from ._gemini_cache import (
    PLAN,
    REGISTRY,
    TTL_S,
    Plan,
    StablePrefix,
    cache_gone,
    create_bound,
    create_cache,
    explicit_min_tokens,
    margin_s,
    pays_at,
    stable_prefix,
)
from ._guard import check_real_call_allowed
from ._ledger import CallBound, current_ledger, input_token_bound
from ._prices import Price
from ._provider import (
    DEFAULT_MAX_RETRIES,
    PromptCache,
    ProviderModel,
    RawReply,
    Tokens,
)
from ._vendor import (
    error_for_status,
    parse_retry_after,
    require_sdk,
    resolve_api_key,
)

if TYPE_CHECKING:
    from google import genai

__all__ = ["GoogleModel", "gemini_schema"]

log = logging.getLogger("swarmbus.models")

_REFUSED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
    }
)


def gemini_schema(output_type: type[BaseModel]) -> dict[str, Any]:
    """The output type's JSON schema as Gemini accepts it.

    Gemini rejects ``additionalProperties`` and empties free-form objects, so a
    ``dict`` field is a config error here: model such data as a list of objects.
    """

    def clean(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            extra = node.get("additionalProperties")
            if isinstance(extra, dict) or (extra is True and not node.get("properties")):
                raise ConfigError(
                    f"{output_type.__name__}{path} is a dict (free-form object); Gemini "
                    "rejects or empties those in output schemas. Model it as a list of objects."
                )
            return {
                k: clean(v, f"{path}.{k}" if k not in ("properties", "$defs", "items") else path)
                for k, v in node.items()
                if k != "additionalProperties"
            }
        if isinstance(node, list):
            return [clean(v, path) for v in node]
        return node

    result: dict[str, Any] = clean(output_type.model_json_schema(), "")
    return result


class GoogleModel(ProviderModel):
    """A Gemini model through ``google.genai.Client`` (Gemini Developer API).

    The key comes from ``api_key_file`` / ``api_key_env`` / ``GEMINI_API_KEY`` /
    ``GOOGLE_API_KEY`` (read, and registered for scrubbing, now); the client is
    created by ``prepare`` (or given as ``client``, borrowed). ``max_retries``
    bounds the SDK's retries of 408 / 429 / 5xx and transport errors (never of
    401/403), starting ``retry_delay_s`` apart.

    Usage: ``promptTokenCount`` (cached content included) as input;
    ``candidatesTokenCount`` plus ``thoughtsTokenCount`` (separate on the wire,
    both billed as output) as output; a reply without ``usageMetadata`` is
    estimated. A reply with no candidates and no block reason is an empty reply
    (``ProviderEmptyReplyError``), a block reason a refusal. Raises
    ``MissingSDKError`` now if ``google-genai`` is not installed.

    Explicit context caching (``prompt_cache`` ``5m`` / ``1h``, never ``off``; the rule
    is ``_gemini_cache``'s docstring): a stable prefix over the model's minimum that
    missed the implicit cache on a repeat gets a cache (``caches.create``, ``ttl`` 300 s
    or 3600 s) that the next requests refer to (``cached_content``, only the rest of the
    contents). The create is a paid call: bounded by the current ledger first (made only
    when the budget left covers it *and* the request's whole worst case, else the request
    goes out without it), then booked with its ``totalTokenCount`` as input and
    ``cache_write_tokens`` at ``Price.cache_create_cost``. A model without
    ``cache_storage_per_hour`` in its price (unpriced ones too) gets none. A failed create
    is not tried again for that prefix; a request whose cache is gone (403, 404, a 400
    naming it) is sent again once without it.
    """

    sdk_module = "google.genai"
    extra = "google"

    def __init__(
        self,
        model: str,
        *,
        client: genai.Client | None = None,
        base_url: str | None = None,
        api_key_env: str | None = None,
        api_key_file: str | os.PathLike[str] | None = None,
        timeout_s: float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_delay_s: float = 1.0,
        price: Price | None = None,
        prompt_cache: PromptCache = "5m",
    ) -> None:
        super().__init__("google", model, price=price, timeout_s=timeout_s,
                         prompt_cache=prompt_cache)
        self.base_url = base_url
        self._max_retries = max_retries
        self._retry_delay_s = retry_delay_s
        self._client: genai.Client | None = client
        self._owns_client = client is None
        self._key: SecretStr | None = None
        self._account = f"client:{id(client)}"  # whose explicit caches these are
        if client is not None:
            self._prepared = True
            return
        require_sdk("google.genai", provider="google", extra="google")
        key = resolve_api_key(
            provider="google",
            env=api_key_env,
            file=api_key_file,
            default_envs=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
            required=True,
        )
        assert key is not None
        self._key, self._key_source = key.value, key.source
        self._account = hashlib.sha256(
            f"{base_url}\0{key.value.get_secret_value()}".encode()).hexdigest()

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"GoogleModel({self.name!r}{where})"

    def _import_sdk(self) -> None:
        import google.genai  # noqa: F401

    def _create_client(self) -> None:
        from google import genai
        from google.genai import types as genai_types

        assert self._key is not None
        self._client = genai.Client(
            api_key=self._key.get_secret_value(),
            http_options=genai_types.HttpOptions(
                base_url=self.base_url,
                retry_options=genai_types.HttpRetryOptions(
                    attempts=self._max_retries + 1,
                    initial_delay=self._retry_delay_s,
                    max_delay=8.0,
                    jitter=self._retry_delay_s,  # the SDK's default jitter is a whole second
                ),
            ),
        )

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aio.aclose()
            self._client.close()

    async def _call_once(
        self, request: ModelRequest[Any], history: list[ChatMessage], spent: list[Provenance]
    ) -> tuple[RawReply, int | None]:
        token = PLAN.set(await self._plan(request, history, spent))
        try:
            return await super()._call_once(request, history, spent)
        finally:
            PLAN.reset(token)

    async def _plan(self, request: ModelRequest[Any], history: list[ChatMessage],
                    spent: list[Provenance]) -> Plan | None:
        """Whether this call refers to an explicit cache (creating it first), or None when
        its prefix is not one explicit caching looks at (see the class docstring)."""
        price = self.price()
        minimum = explicit_min_tokens(self.model)
        if self.prompt_cache == "off" or price is None or minimum is None:
            return None
        ttl_s = TTL_S[self.prompt_cache]
        needed = pays_at(price, ttl_s)
        prefix = stable_prefix(request, history, model=self.model, account=self._account)
        if needed is None or prefix is None or prefix.tokens < minimum:
            return None
        decision = REGISTRY.decide(prefix.key, time.monotonic())
        if decision.use:
            return Plan(prefix, decision.use)
        if not decision.create:
            return Plan(prefix, repeat=decision.repeat)
        try:
            name = await self._create(request, history, prefix, price, ttl_s, needed, spent)
        except BaseException:
            REGISTRY.skipped(prefix.key)  # a limit stopped it (or a cancel): not a failure
            raise
        return Plan(prefix, name, repeat=True)

    async def _create(self, request: ModelRequest[Any], history: list[ChatMessage],
                      prefix: StablePrefix, price: Price, ttl_s: int, needed: int,
                      spent: list[Provenance]) -> str:
        """Create the cache of ``prefix`` and book it; its name, or "" when it was not
        made (the budget left cannot also cover the request) or failed."""
        assert self._client is not None
        check_real_call_allowed(self.name)
        bound = create_bound(price, prefix, ttl_s)
        ledger = current_ledger()
        if ledger is not None:
            if ledger.left_usd is not None:
                call = CallBound(self._bound_price(), input_token_bound(request, history),
                                 request.settings.max_tokens)
                worst = (bound.worst_usd() or 0.0) + (call.worst_usd() or 0.0)
                if worst > ledger.left_usd / max(ledger.share, 1):
                    REGISTRY.skipped(prefix.key)
                    return ""
            ledger.before_call(self.name, bound)  # raises to stop; unchanged
        sent_at, started = time.monotonic(), time.perf_counter()
        try:
            made = await create_cache(self._client, self.model, prefix, ttl_s,
                                      timeout_s=self._timeout(request))
        except Exception as exc:
            REGISTRY.failed(prefix.key)
            log.info("%s: no explicit cache for this prefix (its create failed: %s)",
                     self.name, getattr(exc, "code", type(exc).__name__))
            return ""
        tokens = made.tokens or prefix.tokens  # without usage figures: estimated
        booked = Provenance(
            provider=self.provider, model=self.model, input_tokens=tokens,
            cache_write_tokens=tokens, cost_usd=price.cache_create_cost(tokens, ttl_s),
            latency_s=time.perf_counter() - started, request_hash=request.request_hash(self.name),
            calls=1, estimated_calls=0 if made.tokens else 1)
        spent.append(booked)
        if ledger is not None:
            await ledger.book(booked)
        if not made.name:
            REGISTRY.failed(prefix.key)
            return ""
        REGISTRY.created(prefix.key, made.name, pays_at=needed,
                         expires=sent_at + made.lifetime_s - margin_s(made.lifetime_s))
        return made.name

    async def _call(
        self, request: ModelRequest[Any], history: list[ChatMessage], timeout_s: float
    ) -> RawReply:
        from google.genai import errors as genai_errors
        from google.genai import types as genai_types

        assert self._client is not None
        plan = PLAN.get()
        http = genai_types.HttpOptions(timeout=max(1, round(timeout_s * 1000)))

        async def send(cached: str) -> Any:
            assert self._client is not None
            turns = [(m.role, m.content) for m in history]
            if cached and plan is not None:
                turns[0] = ("user", plan.prefix.rest)
            contents = [genai_types.Content(role="user" if role == "user" else "model",
                                            parts=[genai_types.Part(text=text)])
                        for role, text in turns]
            config = genai_types.GenerateContentConfig(
                system_instruction=None if cached else request.system,
                cached_content=cached or None,
                response_mime_type="application/json",
                response_schema=gemini_schema(request.output_type),
                max_output_tokens=request.settings.max_tokens,
                temperature=request.settings.temperature,
                http_options=http,
            )
            return await self._client.aio.models.generate_content(
                model=self.model, contents=contents, config=config)

        if plan is not None and plan.name:
            try:
                response = await send(plan.name)
                REGISTRY.used(plan.prefix.key)
            except genai_errors.APIError as exc:
                if not cache_gone(exc):
                    raise
                REGISTRY.failed(plan.prefix.key)  # expired early or deleted: not again
                response = await send("")
        else:
            response = await send("")
        usage = response.usage_metadata
        tokens: Tokens | None = None
        if usage is not None:
            thoughts = usage.thoughts_token_count or 0
            tokens = Tokens(
                input=usage.prompt_token_count or 0,
                output=(usage.candidates_token_count or 0) + thoughts,
                cached=usage.cached_content_token_count or 0,
                reasoning=thoughts,
            )
            if plan is not None and not plan.name:
                REGISTRY.answered(plan.prefix.key, repeat=plan.repeat, cached=tokens.cached,
                                  tokens=plan.prefix.tokens)
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            reason = f"prompt blocked: {_enum_name(feedback.block_reason)}"
            return RawReply("", tokens, stop="refusal", refusal=reason)
        if not response.candidates:
            return RawReply("", tokens, stop="empty")
        candidate = response.candidates[0]
        parts = candidate.content.parts if candidate.content and candidate.content.parts else []
        text = "".join(p.text for p in parts if p.text and not p.thought)
        finish = _enum_name(candidate.finish_reason) if candidate.finish_reason else ""
        if finish in _REFUSED:
            return RawReply("", tokens, stop="refusal", refusal=f"finish reason {finish}")
        if finish == "MAX_TOKENS":
            return RawReply(text, tokens, stop="length", finish=finish)
        return RawReply(text, tokens, finish=finish)

    def _map_error(self, exc: Exception) -> ModelError | None:
        import httpx2
        from google.genai import errors as genai_errors

        if isinstance(exc, genai_errors.APIError):
            status = exc.code
            if _invalid_key(exc.details):
                status = 401  # Gemini answers 400 INVALID_ARGUMENT for a bad key
            headers = getattr(exc.response, "headers", None)
            return error_for_status(
                status,
                exc.message or exc.status or "",
                model=self.name,
                retry_after_s=_retry_delay(exc.details) or parse_retry_after(headers),
                key_source=self._key_source,
            )
        if isinstance(exc, httpx2.TimeoutException):
            return ProviderTimeoutError(f"{self.name}: request timed out", model=self.name)
        if isinstance(exc, httpx2.TransportError):
            return ProviderError(f"{self.name}: cannot connect: {exc}", model=self.name)
        return None


_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _details(body: Any) -> list[Any]:
    error = body.get("error", body) if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return details if isinstance(details, list) else []


def _retry_delay(body: Any) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "7s"``), if any."""
    for detail in _details(body):
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _invalid_key(body: Any) -> bool:
    return any(
        isinstance(d, dict) and d.get("reason") in ("API_KEY_INVALID", "API_KEY_EXPIRED")
        for d in _details(body)
    )


def _enum_name(value: object) -> str:
    return str(getattr(value, "value", value))
