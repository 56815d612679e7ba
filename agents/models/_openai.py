"""OpenAI chat completions (and OpenAI-compatible servers: Ollama, vLLM, llama.cpp)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import openai
from openai.lib._pydantic import to_strict_json_schema  # the SDK's own strict-schema transform

from ._base import ChatMessage, ModelRequest
from ._errors import ModelError, ProviderError, ProviderTimeoutError
from ._prices import Price
from ._provider import (
    DEFAULT_MAX_RETRIES,
    ProviderModel,
    RawReply,
    error_for_status,
    forbid_extra,
    resolve_api_key,
    schema_name,
)

__all__ = ["OpenAIModel"]

# A placeholder sent to local servers that ignore keys (the SDK insists on one).
_NO_KEY = "sk-no-key-required"


class OpenAIModel(ProviderModel):
    """A chat-completions model with native structured output (strict JSON schema).

    ``provider`` names it in provenance and prices (``openai``, ``ollama``,
    ``vllm``, ...). Give ``client`` to borrow an ``AsyncOpenAI`` you manage
    (it is then never closed here); otherwise one is created from
    ``base_url`` and the key in ``api_key_file`` / ``api_key_env`` /
    ``OPENAI_API_KEY`` and closed by ``aclose``. ``max_retries`` bounds the
    SDK's own retries of 429 / 5xx / timeouts before a ``ProviderError``.
    """

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
    ) -> None:
        super().__init__(provider, model, price=price, timeout_s=timeout_s)
        self.base_url = base_url
        # OpenAI rejects max_tokens on newer models; many local servers only know max_tokens.
        self._native = provider == "openai"
        if client is not None:
            self._client, self._owns_client = client, False
            return
        key = resolve_api_key(
            provider=provider,
            env=api_key_env,
            file=api_key_file,
            default_envs=("OPENAI_API_KEY",) if provider == "openai" else (),
            required=require_key if require_key is not None else base_url is None,
        )
        self._client = openai.AsyncOpenAI(
            api_key=key.get_secret_value() if key else _NO_KEY,
            base_url=base_url,
            max_retries=max_retries,
        )
        self._owns_client = True

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"OpenAIModel({self.name!r}{where})"

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.close()

    async def _call(
        self, request: ModelRequest[Any], history: list[ChatMessage], timeout_s: float
    ) -> RawReply:
        messages: list[Any] = [{"role": "system", "content": request.system}]
        messages += [{"role": m.role, "content": m.content} for m in history]
        extra: dict[str, Any] = {}
        if request.settings.temperature is not None:
            extra["temperature"] = request.settings.temperature
        if self._native:
            extra["max_completion_tokens"] = request.settings.max_tokens
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
        input_tokens = usage.prompt_tokens if usage else 0
        output_tokens = usage.completion_tokens if usage else 0
        details = usage.prompt_tokens_details if usage else None
        cached = (details.cached_tokens or 0) if details else 0
        base = RawReply(
            "", input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached
        )
        if not completion.choices:
            return replace(base, stop="refusal", refusal="no choices returned")
        choice = completion.choices[0]
        message = choice.message
        if message.refusal:
            return replace(base, stop="refusal", refusal=message.refusal)
        if choice.finish_reason == "content_filter":
            return replace(base, stop="refusal", refusal="content filter")
        if choice.finish_reason == "length":
            return replace(base, text=message.content or "", stop="length")
        return replace(base, text=message.content or "")

    def _map_error(self, exc: Exception) -> ModelError | None:
        if isinstance(exc, openai.APITimeoutError):
            return ProviderTimeoutError(f"{self.name}: request timed out", model=self.name)
        if isinstance(exc, openai.APIStatusError):
            return error_for_status(exc.status_code, exc.message, model=self.name)
        if isinstance(exc, openai.APIConnectionError):
            return ProviderError(f"{self.name}: cannot connect: {exc.message}", model=self.name)
        return None
