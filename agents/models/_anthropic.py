"""Anthropic messages, with structured outputs (or a forced tool on older models)."""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import anthropic
from anthropic.lib._parse._transform import transform_schema  # the SDK's own schema transform

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
)

__all__ = ["AnthropicModel"]

StructuredMode = Literal["auto", "native", "tool"]

_TOOL = "final_answer"
# Models without structured outputs get the forced-tool mechanism under "auto".
_TOOL_ONLY_PREFIXES = (
    "claude-3",
    "claude-sonnet-4-0",
    "claude-sonnet-4-2025",
    "claude-opus-4-0",
    "claude-opus-4-2025",
)


class AnthropicModel(ProviderModel):
    """A Claude model through ``anthropic.AsyncAnthropic``.

    ``structured_output``: ``"native"`` sends ``output_config.format`` (a JSON
    schema), ``"tool"`` forces a single tool whose input is the answer;
    ``"auto"`` picks ``tool`` for models that predate structured outputs.
    The key comes from ``api_key_file`` / ``api_key_env`` / ``ANTHROPIC_API_KEY``;
    the base URL from ``base_url`` or ``ANTHROPIC_BASE_URL``. The Anthropic SDK
    has no temperature parameter, so ``ModelSettings.temperature`` is not sent.
    """

    def __init__(
        self,
        model: str,
        *,
        client: anthropic.AsyncAnthropic | None = None,
        base_url: str | None = None,
        api_key_env: str | None = None,
        api_key_file: str | os.PathLike[str] | None = None,
        timeout_s: float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        price: Price | None = None,
        structured_output: StructuredMode = "auto",
    ) -> None:
        super().__init__("anthropic", model, price=price, timeout_s=timeout_s)
        self.base_url = base_url
        if structured_output == "auto":
            structured_output = "tool" if model.startswith(_TOOL_ONLY_PREFIXES) else "native"
        self.structured_output: StructuredMode = structured_output
        if client is not None:
            self._client, self._owns_client = client, False
            return
        key = resolve_api_key(
            provider="anthropic",
            env=api_key_env,
            file=api_key_file,
            default_envs=("ANTHROPIC_API_KEY",),
            required=True,
        )
        assert key is not None
        # An explicit key also stops the SDK from reading profile files on disk.
        self._client = anthropic.AsyncAnthropic(
            api_key=key.get_secret_value(), base_url=base_url, max_retries=max_retries
        )
        self._owns_client = True

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"AnthropicModel({self.name!r}{where})"

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.close()

    async def _call(
        self, request: ModelRequest[Any], history: list[ChatMessage], timeout_s: float
    ) -> RawReply:
        schema = forbid_extra(transform_schema(request.output_type))
        messages: list[Any] = [{"role": m.role, "content": m.content} for m in history]
        kwargs: dict[str, Any] = {}
        if self.structured_output == "tool":
            kwargs["tools"] = [
                {
                    "name": _TOOL,
                    "description": "Give your answer. Its input is the whole answer.",
                    "input_schema": schema,
                }
            ]
            kwargs["tool_choice"] = {"type": "tool", "name": _TOOL}
        else:
            kwargs["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        message = await self._client.messages.create(
            model=self.model,
            max_tokens=request.settings.max_tokens,
            system=request.system,
            messages=messages,
            timeout=timeout_s,
            **kwargs,
        )
        usage = message.usage
        cache_read = usage.cache_read_input_tokens or 0
        # Anthropic's input_tokens excludes cache reads and writes; ours includes them.
        input_tokens = usage.input_tokens + cache_read + (usage.cache_creation_input_tokens or 0)
        text = ""
        for block in message.content:
            if block.type == "tool_use" and block.name == _TOOL:
                text = json.dumps(block.input)
                break
            if block.type == "text":
                text += block.text
        reply = RawReply(
            text,
            input_tokens=input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=cache_read,
        )
        if message.stop_reason == "refusal":
            details = message.stop_details
            reason = (details.explanation or details.category or "") if details else ""
            return RawReply(
                "",
                input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens,
                cached_tokens=reply.cached_tokens,
                stop="refusal",
                refusal=reason or text,
            )
        if message.stop_reason in ("max_tokens", "model_context_window_exceeded"):
            return RawReply(
                text,
                input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens,
                cached_tokens=reply.cached_tokens,
                stop="length",
            )
        return reply

    def _map_error(self, exc: Exception) -> ModelError | None:
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderTimeoutError(f"{self.name}: request timed out", model=self.name)
        if isinstance(exc, anthropic.APIStatusError):
            return error_for_status(exc.status_code, exc.message, model=self.name)
        if isinstance(exc, anthropic.APIConnectionError):
            return ProviderError(f"{self.name}: cannot connect: {exc.message}", model=self.name)
        return None
