"""What every real provider shares: the repair loop, pricing, provenance, keys, error mapping."""

from __future__ import annotations

import os
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr, ValidationError

from swarmbus.protocols import Provenance

from ._base import ChatMessage, Model, ModelRequest, ModelResponse, T
from ._errors import (
    MissingAPIKeyError,
    ModelError,
    OutputTruncatedError,
    OutputValidationError,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimitError,
    ProviderServerError,
    ProviderTimeoutError,
    RefusalError,
)
from ._guard import check_real_call_allowed
from ._prices import Price, price_table

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "ProviderModel",
    "RawReply",
    "error_for_status",
    "forbid_extra",
    "repair_prompt",
    "resolve_api_key",
    "schema_name",
    "validate_output",
]

DEFAULT_MAX_RETRIES = 1
_MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class RawReply:
    """One provider answer, normalised. ``input_tokens`` includes ``cached_tokens``."""

    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    stop: Literal["ok", "length", "refusal"] = "ok"
    refusal: str = ""


def resolve_api_key(
    *,
    provider: str,
    env: str | None,
    file: str | os.PathLike[str] | None,
    default_envs: tuple[str, ...],
    required: bool,
) -> SecretStr | None:
    """The key from ``file``, else ``env``, else the provider's usual variables.

    Keys never come from config text itself, so a swarm.yaml can be shared.
    """
    if file is not None:
        try:
            key = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise MissingAPIKeyError(
                f"cannot read the {provider} API key file {os.fspath(file)!r}: {exc.strerror}"
            ) from None
        if key:
            return SecretStr(key)
        raise MissingAPIKeyError(f"the {provider} API key file {os.fspath(file)!r} is empty")
    names = (env,) if env else default_envs
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return SecretStr(value)
    if required:
        raise MissingAPIKeyError(
            f"no API key for {provider}: set {' or '.join(names)} in the environment, "
            "or give api_key_env / api_key_file in the model spec"
        )
    return None


def error_for_status(status: int, message: str, *, model: str) -> ProviderError:
    """Map an HTTP status to the matching ``ProviderError`` subclass."""
    text = f"{model}: HTTP {status}: {message}"[:_MAX_ERROR_CHARS]
    if status == 429:
        return ProviderRateLimitError(text, model=model, status_code=status)
    if status in (408, 504):
        return ProviderTimeoutError(text, model=model, status_code=status)
    if status >= 500:
        return ProviderServerError(text, model=model, status_code=status)
    if status in (401, 403):
        return ProviderAuthError(text, model=model, status_code=status)
    return ProviderError(text, model=model, status_code=status)


def repair_prompt(error: ValidationError | str) -> str:
    detail = error if isinstance(error, str) else _describe(error)
    return (
        "Your previous reply did not match the required JSON schema:\n"
        f"{detail[:_MAX_ERROR_CHARS]}\n"
        "Reply again with only one JSON object that fits the schema, and nothing else."
    )


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        lines.append(f"- {where}: {item['msg']}")
    return "\n".join(lines)


def validate_output(output_type: type[T], text: str) -> T:
    return output_type.model_validate_json(text)


class ProviderModel(Model):
    """A real provider behind an official SDK.

    Subclasses implement ``_call`` (one request, normalised) and ``_map_error``
    (SDK exception -> ``ModelError``); this class runs the repair loop, checks
    the real-call switch before every call, prices usage and builds provenance.
    """

    provider: str
    model: str

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @abstractmethod
    async def _call(
        self, request: ModelRequest[Any], history: list[ChatMessage], timeout_s: float
    ) -> RawReply: ...

    @abstractmethod
    def _map_error(self, exc: Exception) -> ModelError | None:
        """The ``ModelError`` for an SDK exception, or None to let it propagate."""

    def _timeout(self, request: ModelRequest[Any]) -> float:
        return self._timeout_s if self._timeout_s is not None else request.settings.timeout_s

    async def _call_once(self, request: ModelRequest[Any], history: list[ChatMessage]) -> RawReply:
        check_real_call_allowed(self.name)
        try:
            return await self._call(request, history, self._timeout(request))
        except ModelError:
            raise
        except Exception as exc:
            mapped = self._map_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        started = time.perf_counter()
        history = list(request.messages)
        tokens = [0, 0, 0]
        output: T | None = None
        for attempt in (1, 2):
            raw = await self._call_once(request, history)
            tokens[0] += raw.input_tokens
            tokens[1] += raw.output_tokens
            tokens[2] += raw.cached_tokens
            if raw.stop == "refusal":
                raise RefusalError(
                    f"{self.name} refused: {raw.refusal or 'no reason given'}",
                    model=self.name,
                    reason=raw.refusal,
                )
            if raw.stop == "length":
                raise OutputTruncatedError(
                    f"{self.name} stopped at the token limit "
                    f"(max_tokens={request.settings.max_tokens}); raise it or ask for less",
                    model=self.name,
                )
            try:
                output = validate_output(request.output_type, raw.text)
                break
            except ValidationError as exc:
                if attempt == 2:
                    raise OutputValidationError(
                        f"{self.name} returned output that does not fit "
                        f"{request.output_type.__name__}, even after one repair attempt:\n"
                        f"{_describe(exc)[:_MAX_ERROR_CHARS]}",
                        model=self.name,
                        raw_output=raw.text,
                    ) from exc
                history += [
                    ChatMessage(role="assistant", content=raw.text or "(empty reply)"),
                    ChatMessage(role="user", content=repair_prompt(exc)),
                ]
        assert output is not None
        return ModelResponse(
            output=output,
            provenance=self._provenance(request, tokens, time.perf_counter() - started),
        )

    def _provenance(
        self, request: ModelRequest[Any], tokens: list[int], latency_s: float
    ) -> Provenance:
        input_tokens, output_tokens, cached_tokens = tokens
        if self._price is not None:
            cost: float | None = self._price.cost(
                input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached_tokens
            )
        else:
            cost = price_table().cost(
                self.name,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_tokens=cached_tokens,
            )
        return Provenance(
            provider=self.provider,
            model=self.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            cost_usd=cost,
            latency_s=latency_s,
            request_hash=request.request_hash(self.name),
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
