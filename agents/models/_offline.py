"""Offline models for demos and tests: replies from a script or from a function."""

from __future__ import annotations

import inspect
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, TypeAlias

import anyio
from pydantic import BaseModel, ValidationError

from swarmbus.protocols import ConfigError, Provenance

from ._base import ChatMessage, Model, ModelRequest, ModelResponse, T
from ._errors import OutputValidationError, ScriptExhaustedError
from ._provider import repair_prompt

__all__ = ["FunctionModel", "Reply", "ScriptedModel"]

Reply: TypeAlias = BaseModel | str | Mapping[str, Any] | BaseException
"""A reply: an instance of (or dict / JSON text for) the output type, or an exception to raise."""


def _split(name: str) -> tuple[str, str]:
    provider, sep, model = name.partition(":")
    if not sep or not provider or not model:
        raise ConfigError(f"model names are 'provider:model', got {name!r}")
    return provider, model


def _to_output(reply: Reply, output_type: type[T]) -> T:
    if isinstance(reply, BaseException):
        raise reply
    if isinstance(reply, output_type):
        return reply
    if isinstance(reply, BaseModel):
        return output_type.model_validate(reply.model_dump())
    if isinstance(reply, str):
        return output_type.model_validate_json(reply)
    return output_type.model_validate(dict(reply))


def _as_text(reply: Reply) -> str:
    if isinstance(reply, BaseModel):
        return reply.model_dump_json()
    if isinstance(reply, str):
        return reply
    return repr(reply)


class _OfflineModel(Model):
    """Validates replies like a real provider: one repair, then ``OutputValidationError``."""

    def __init__(self, name: str, *, latency_s: float, keep_requests: int | None = None) -> None:
        self.provider, self.model = _split(name)
        self.name = name
        self.latency_s = latency_s
        self.requests: deque[ModelRequest[Any]] = deque(maxlen=keep_requests)
        """Every request seen (the last ``keep_requests`` if set), including repair
        requests, for assertions in tests."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @abstractmethod
    async def _reply(self, request: ModelRequest[Any]) -> Reply: ...

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        started = time.perf_counter()
        current = request
        for attempt in (1, 2):
            self.requests.append(current)
            if self.latency_s > 0:
                await anyio.sleep(self.latency_s)
            reply = await self._reply(current)
            try:
                output = _to_output(reply, request.output_type)
                break
            except ValidationError as exc:
                if attempt == 2:
                    raise OutputValidationError(
                        f"{self.name}: reply does not fit {request.output_type.__name__} "
                        f"after one repair attempt: {exc}",
                        model=self.name,
                        raw_output=_as_text(reply),
                    ) from exc
                current = replace(
                    current,
                    messages=(
                        *current.messages,
                        ChatMessage(role="assistant", content=_as_text(reply)),
                        ChatMessage(role="user", content=repair_prompt(exc)),
                    ),
                )
        provenance = Provenance(
            provider=self.provider,
            model=self.model,
            cost_usd=0.0,
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
    Costs nothing (cost 0.0, zero tokens).
    """

    def __init__(
        self, replies: Iterable[Reply], *, name: str = "scripted:model", latency_s: float = 0.0
    ) -> None:
        super().__init__(name, latency_s=latency_s)
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
    bound ``keep_requests``, or ``requests`` grows with every call.
    """

    def __init__(
        self, function: ReplyFunction, *, name: str = "function:model", latency_s: float = 0.0,
        keep_requests: int | None = None,
    ) -> None:
        super().__init__(name, latency_s=latency_s, keep_requests=keep_requests)
        self._function = function

    async def _reply(self, request: ModelRequest[Any]) -> Reply:
        result = self._function(request)
        if inspect.isawaitable(result):
            result = await result
        return result
