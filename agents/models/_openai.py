"""OpenAI chat completions (and OpenAI-compatible servers: Ollama, vLLM, llama.cpp)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from ._base import ChatMessage, ModelRequest
from ._errors import ModelError, ProviderError, ProviderTimeoutError
from ._prices import Price
from ._provider import (
    DEFAULT_MAX_RETRIES,
    PromptCache,
    ProviderModel,
    RawReply,
    Tokens,
    forbid_extra,
    schema_name,
)
from ._vendor import (
    error_for_status,
    no_retry_on_auth,
    parse_retry_after,
    require_sdk,
    resolve_api_key,
)

if TYPE_CHECKING:
    import openai

__all__ = ["OpenAIModel"]

# A placeholder sent to local servers that ignore keys (the SDK insists on one).
_NO_KEY = "sk-no-key-required"


class OpenAIModel(ProviderModel):
    """A chat-completions model with native structured output (strict JSON schema).

    ``provider`` names it in provenance and prices (``openai``, ``ollama``,
    ``vllm``, ...). Give ``client`` to borrow an ``AsyncOpenAI`` you manage
    (it is then never closed here, and its key is not registered for
    scrubbing: ``swarmbus.bus.register_secret`` it yourself); otherwise one is
    created by ``prepare`` from ``base_url`` and the key in ``api_key_file`` /
    ``api_key_env`` / ``OPENAI_API_KEY`` (read, and registered, now) and closed
    by ``aclose``. ``max_retries`` bounds the SDK's own retries of 429 / 5xx /
    timeouts (never of 401/403) before a ``ProviderError``.

    Prompt cache: OpenAI caches prefixes of 1,024 tokens and more by itself; a
    request's ``cache_key`` goes out as ``prompt_cache_key`` (to OpenAI only, not to
    local servers) so that the rounds of one run's step reach the same cache, unless
    ``prompt_cache="off"``.

    Usage: ``prompt_tokens`` (cached ones included) and ``completion_tokens``
    (reasoning included) as billed; a reply without ``usage`` is estimated.
    Raises ``MissingSDKError`` now if the ``openai`` package is not installed.
    """

    sdk_module = "openai"
    extra = "openai"

    def __init__(
        self,
        model: str,
        *,
        provider: str = "openai",
        client: openai.AsyncOpenAI | None = None,
        base_url: str | None = None,
        api_key_env: str | None = None,
        api_key_file: str | os.PathLike[str] | None = None,
        require_key: bool | None = None,
        timeout_s: float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        price: Price | None = None,
        prompt_cache: PromptCache = "5m",
    ) -> None:
        super().__init__(provider, model, price=price, timeout_s=timeout_s,
                         prompt_cache=prompt_cache)
        self.base_url = base_url
        self._max_retries = max_retries
        # OpenAI rejects max_tokens on newer models; many local servers only know max_tokens.
        self._native = provider == "openai"
        self._client: openai.AsyncOpenAI | None = client
        self._owns_client = client is None
        self._key: SecretStr | None = None
        if client is not None:
            self._prepared = True
            return
        require_sdk("openai", provider=provider, extra="openai")
        key = resolve_api_key(
            provider=provider,
            env=api_key_env,
            file=api_key_file,
            default_envs=("OPENAI_API_KEY",) if provider == "openai" else (),
            required=require_key if require_key is not None else base_url is None,
        )
        self._key = key.value if key else None
        self._key_source = key.source if key else None

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"OpenAIModel({self.name!r}{where})"

    def _import_sdk(self) -> None:
        import openai  # noqa: F401

    def _create_client(self) -> None:
        import openai

        self._client = openai.AsyncOpenAI(
            api_key=self._key.get_secret_value() if self._key else _NO_KEY,
            base_url=self.base_url,
            max_retries=self._max_retries,
            http_client=openai.DefaultAsyncHttpxClient(
                event_hooks={"response": [no_retry_on_auth]}
            ),
        )

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.close()

    async def _call(
        self, request: ModelRequest[Any], history: list[ChatMessage], timeout_s: float
    ) -> RawReply:
        from openai.lib._pydantic import to_strict_json_schema  # the SDK's own transform

        assert self._client is not None
        messages: list[Any] = [{"role": "system", "content": request.system}]
        messages += [{"role": m.role, "content": m.content} for m in history]
        extra: dict[str, Any] = {}
        if request.settings.temperature is not None:
            extra["temperature"] = request.settings.temperature
        if self._native:
            extra["max_completion_tokens"] = request.settings.max_tokens
            if request.cache_key and self.prompt_cache != "off":
                # Requests with one key and one prefix are sent to the same cache.
                extra["prompt_cache_key"] = request.cache_key
        else:
            extra["max_tokens"] = request.settings.max_tokens
        completion = await self._client.chat.completions.create(
            model=self.model,
            messages=messages,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": schema_name(request.output_type),
                    "schema": forbid_extra(to_strict_json_schema(request.output_type)),
                    "strict": True,
                },
            },
            timeout=timeout_s,
            **extra,
        )
        usage = completion.usage
        tokens: Tokens | None = None
        if usage is not None:
            prompt = usage.prompt_tokens_details
            done = usage.completion_tokens_details
            tokens = Tokens(
                input=usage.prompt_tokens or 0,
                output=usage.completion_tokens or 0,  # reasoning tokens included
                cached=(prompt.cached_tokens or 0) if prompt else 0,
                cache_write=(getattr(prompt, "cache_write_tokens", None) or 0) if prompt else 0,
                reasoning=(done.reasoning_tokens or 0) if done else 0,
            )
        if not completion.choices:
            return RawReply("", tokens, stop="empty")
        choice = completion.choices[0]
        message = choice.message
        if message.refusal:
            return RawReply("", tokens, stop="refusal", refusal=message.refusal)
        if choice.finish_reason == "content_filter":
            return RawReply("", tokens, stop="refusal", refusal="content filter")
        finish = choice.finish_reason or ""
        if finish == "length":
            return RawReply(message.content or "", tokens, stop="length", finish=finish)
        return RawReply(message.content or "", tokens, finish=finish)

    def _map_error(self, exc: Exception) -> ModelError | None:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return ProviderTimeoutError(f"{self.name}: request timed out", model=self.name)
        if isinstance(exc, openai.APIStatusError):
            return error_for_status(
                exc.status_code,
                exc.message,
                model=self.name,
                retry_after_s=parse_retry_after(exc.response.headers),
                key_source=self._key_source,
            )
        if isinstance(exc, openai.APIConnectionError):
            return ProviderError(f"{self.name}: cannot connect: {exc.message}", model=self.name)
        return None
