"""Anthropic messages, with structured outputs (or a forced tool on older models)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from ._base import CACHE_BREAKPOINTS, ChatMessage, ModelRequest
from ._errors import ModelError, ProviderError, ProviderTimeoutError
from ._prices import Price
from ._provider import (
    DEFAULT_MAX_RETRIES,
    PromptCache,
    ProviderModel,
    RawReply,
    Tokens,
    forbid_extra,
)
from ._vendor import (
    error_for_status,
    no_retry_on_auth,
    parse_retry_after,
    require_sdk,
    resolve_api_key,
)

if TYPE_CHECKING:
    import anthropic

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
    schema), ``"tool"`` forces a single tool whose input is the answer (an
    input sent as a JSON string instead of an object is accepted as is);
    ``"auto"`` picks ``tool`` for models that predate structured outputs.
    The key comes from ``api_key_file`` / ``api_key_env`` / ``ANTHROPIC_API_KEY``
    (read, and registered for scrubbing, now); the base URL from ``base_url``
    or ``ANTHROPIC_BASE_URL``. The client is created by ``prepare`` (or given as
    ``client``, borrowed). The Anthropic SDK has no temperature parameter, so
    ``ModelSettings.temperature`` is not sent.

    Prompt cache (``prompt_cache``, default ``"5m"``): a message made of ``parts`` is
    sent as one text block per part, with a breakpoint after the system prompt and
    after each part marked ``cache`` (at most four in all); entries live 5 minutes
    (writes bill 1.25x input) or, with ``"1h"``, an hour (2x); reads bill 0.1x.
    ``"off"`` sends plain strings, as before.

    Usage: Anthropic's ``input_tokens`` excludes cache reads and writes; ours
    includes them, with cache writes split by TTL (5 minutes / 1 hour) for
    pricing. Raises ``MissingSDKError`` now if ``anthropic`` is not installed.
    """

    sdk_module = "anthropic"
    extra = "anthropic"

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
        prompt_cache: PromptCache = "5m",
    ) -> None:
        super().__init__("anthropic", model, price=price, timeout_s=timeout_s,
                         prompt_cache=prompt_cache)
        self.base_url = base_url
        self._max_retries = max_retries
        if structured_output == "auto":
            structured_output = "tool" if model.startswith(_TOOL_ONLY_PREFIXES) else "native"
        self.structured_output: StructuredMode = structured_output
        self._client: anthropic.AsyncAnthropic | None = client
        self._owns_client = client is None
        self._key: SecretStr | None = None
        if client is not None:
            self._prepared = True
            return
        require_sdk("anthropic", provider="anthropic", extra="anthropic")
        key = resolve_api_key(
            provider="anthropic",
            env=api_key_env,
            file=api_key_file,
            default_envs=("ANTHROPIC_API_KEY",),
            required=True,
        )
        assert key is not None
        self._key, self._key_source = key.value, key.source

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"AnthropicModel({self.name!r}{where})"

    def _import_sdk(self) -> None:
        import anthropic  # noqa: F401

    def _create_client(self) -> None:
        import anthropic

        assert self._key is not None
        # An explicit key also stops the SDK from reading profile files on disk.
        self._client = anthropic.AsyncAnthropic(
            api_key=self._key.get_secret_value(),
            base_url=self.base_url,
            max_retries=self._max_retries,
            http_client=anthropic.DefaultAsyncHttpxClient(
                event_hooks={"response": [no_retry_on_auth]}
            ),
        )

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.close()

    async def _call(
        self, request: ModelRequest[Any], history: list[ChatMessage], timeout_s: float
    ) -> RawReply:
        from anthropic.lib._parse._transform import transform_schema  # the SDK's own transform

        assert self._client is not None
        schema = forbid_extra(transform_schema(request.output_type))
        system, messages = self._prompt(request, history)
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
            system=system,
            messages=messages,
            timeout=timeout_s,
            **kwargs,
        )
        tokens = _tokens(getattr(message, "usage", None), self.prompt_cache)
        text = ""
        for block in message.content:
            if block.type == "tool_use" and block.name == _TOOL:
                answer: object = block.input
                text = answer if isinstance(answer, str) else json.dumps(answer)
                break
            if block.type == "text":
                text += block.text
        if message.stop_reason == "refusal":
            details = message.stop_details
            reason = (details.explanation or details.category or "") if details else ""
            return RawReply("", tokens, stop="refusal", refusal=reason or text)
        finish = message.stop_reason or ""
        if finish in ("max_tokens", "model_context_window_exceeded"):
            return RawReply(text, tokens, stop="length", finish=finish)
        return RawReply(text, tokens, finish=finish)

    def _prompt(self, request: ModelRequest[Any], history: list[ChatMessage],
                ) -> tuple[Any, list[Any]]:
        """The system prompt and the messages as sent: with the cache on, a message made
        of parts goes as one text block per part, and a breakpoint (``cache_control``)
        ends the system prompt when ``request.cache_system`` and each part marked
        ``cache``; only the last ``CACHE_BREAKPOINTS`` marks are kept (the longest
        prefixes: a read finds the shorter ones behind them)."""
        if self.prompt_cache == "off":
            return request.system, [{"role": m.role, "content": m.content} for m in history]
        control: dict[str, str] = {"type": "ephemeral"}
        if self.prompt_cache == "1h":
            control["ttl"] = "1h"
        marks = [(i, j) for i, m in enumerate(history) for j, p in enumerate(m.parts) if p.cache]
        keep = set(marks[-(CACHE_BREAKPOINTS - int(request.cache_system)):])
        messages: list[Any] = []
        for i, m in enumerate(history):
            if not m.parts:
                messages.append({"role": m.role, "content": m.content})
                continue
            blocks: list[dict[str, Any]] = [{"type": "text", "text": p.text} for p in m.parts]
            for j, block in enumerate(blocks):
                if (i, j) in keep:
                    block["cache_control"] = control
            messages.append({"role": m.role, "content": blocks})
        if not request.cache_system:
            return request.system, messages
        return [{"type": "text", "text": request.system, "cache_control": control}], messages

    def _map_error(self, exc: Exception) -> ModelError | None:
        import anthropic

        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderTimeoutError(f"{self.name}: request timed out", model=self.name)
        if isinstance(exc, anthropic.APIStatusError):
            return error_for_status(
                exc.status_code,
                exc.message,
                model=self.name,
                retry_after_s=parse_retry_after(exc.response.headers),
                key_source=self._key_source,
            )
        if isinstance(exc, anthropic.APIConnectionError):
            return ProviderError(f"{self.name}: cannot connect: {exc.message}", model=self.name)
        return None


def _tokens(usage: Any, ttl: str) -> Tokens | None:
    """``usage`` as ``Tokens``. Writes come split by their entries' lifetime; a reply
    without the split (older API versions, some proxies) wrote what the request's
    breakpoints asked for: 1-hour entries with ``ttl`` "1h", else 5-minute ones."""
    if usage is None:
        return None
    reads = usage.cache_read_input_tokens or 0
    writes = usage.cache_creation_input_tokens or 0
    split = getattr(usage, "cache_creation", None)
    if split is not None:
        writes_1h = split.ephemeral_1h_input_tokens or 0
    else:
        writes_1h = writes if ttl == "1h" else 0
    details = getattr(usage, "output_tokens_details", None)
    return Tokens(
        input=(usage.input_tokens or 0) + reads + writes,
        output=usage.output_tokens or 0,  # thinking tokens included
        cached=reads,
        cache_write=writes,
        cache_write_1h=writes_1h,
        reasoning=(getattr(details, "thinking_tokens", 0) or 0) if details is not None else 0,
    )
