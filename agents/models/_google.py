"""Google Gemini through google-genai, with ``response_schema``."""

from __future__ import annotations

import os
from typing import Any

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from pydantic import BaseModel

from swarmbus.protocols import ConfigError

from ._base import ChatMessage, ModelRequest
from ._errors import ModelError, ProviderError, ProviderTimeoutError
from ._prices import Price
from ._provider import (
    DEFAULT_MAX_RETRIES,
    ProviderModel,
    RawReply,
    error_for_status,
    resolve_api_key,
)

__all__ = ["GoogleModel", "gemini_schema"]

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
    ``GOOGLE_API_KEY``. ``max_retries`` bounds the SDK's retries of 408 / 429 /
    5xx and transport errors, starting ``retry_delay_s`` apart. Give ``client``
    to borrow a ``genai.Client`` you manage.
    """

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
    ) -> None:
        super().__init__("google", model, price=price, timeout_s=timeout_s)
        self.base_url = base_url
        if client is not None:
            self._client, self._owns_client = client, False
            return
        key = resolve_api_key(
            provider="google",
            env=api_key_env,
            file=api_key_file,
            default_envs=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
            required=True,
        )
        assert key is not None
        self._client = genai.Client(
            api_key=key.get_secret_value(),
            http_options=genai_types.HttpOptions(
                base_url=base_url,
                retry_options=genai_types.HttpRetryOptions(
                    attempts=max_retries + 1,
                    initial_delay=retry_delay_s,
                    max_delay=8.0,
                    jitter=retry_delay_s,  # the SDK's default jitter is a whole second
                ),
            ),
        )
        self._owns_client = True

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"GoogleModel({self.name!r}{where})"

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aio.aclose()
            self._client.close()

    async def _call(
        self, request: ModelRequest[Any], history: list[ChatMessage], timeout_s: float
    ) -> RawReply:
        contents = [
            genai_types.Content(
                role="user" if m.role == "user" else "model",
                parts=[genai_types.Part(text=m.content)],
            )
            for m in history
        ]
        config = genai_types.GenerateContentConfig(
            system_instruction=request.system,
            response_mime_type="application/json",
            response_schema=gemini_schema(request.output_type),
            max_output_tokens=request.settings.max_tokens,
            temperature=request.settings.temperature,
            http_options=genai_types.HttpOptions(timeout=max(1, round(timeout_s * 1000))),
        )
        response = await self._client.aio.models.generate_content(
            model=self.model, contents=contents, config=config
        )
        usage = response.usage_metadata
        counts: dict[str, int] = {"input": 0, "output": 0, "cached": 0}
        if usage is not None:
            counts["input"] = usage.prompt_token_count or 0
            # Thinking tokens are billed as output.
            counts["output"] = (usage.candidates_token_count or 0) + (
                usage.thoughts_token_count or 0
            )
            counts["cached"] = usage.cached_content_token_count or 0

        def reply(text: str, stop: Any = "ok", refusal: str = "") -> RawReply:
            return RawReply(
                text,
                input_tokens=counts["input"],
                output_tokens=counts["output"],
                cached_tokens=counts["cached"],
                stop=stop,
                refusal=refusal,
            )

        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            return reply("", "refusal", f"prompt blocked: {_enum_name(feedback.block_reason)}")
        if not response.candidates:
            return reply("", "refusal", "no candidates returned")
        candidate = response.candidates[0]
        parts = candidate.content.parts if candidate.content and candidate.content.parts else []
        text = "".join(p.text for p in parts if p.text and not p.thought)
        finish = _enum_name(candidate.finish_reason) if candidate.finish_reason else ""
        if finish in _REFUSED:
            return reply("", "refusal", f"finish reason {finish}")
        if finish == "MAX_TOKENS":
            return reply(text, "length")
        return reply(text)

    def _map_error(self, exc: Exception) -> ModelError | None:
        if isinstance(exc, genai_errors.APIError):
            return error_for_status(exc.code, exc.message or exc.status or "", model=self.name)
        if isinstance(exc, httpx2.TimeoutException):
            return ProviderTimeoutError(f"{self.name}: request timed out", model=self.name)
        if isinstance(exc, httpx2.TransportError):
            return ProviderError(f"{self.name}: cannot connect: {exc}", model=self.name)
        return None


def _enum_name(value: object) -> str:
    return str(getattr(value, "value", value))
