"""The one seam between role agents and LLMs: ``Model.complete``."""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from swarmbus.protocols import Provenance, Usage

__all__ = [
    "CACHE_BREAKPOINTS",
    "ChatMessage",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "Part",
]

T = TypeVar("T", bound=BaseModel)


CACHE_BREAKPOINTS = 4
"""The most prompt-cache breakpoints one request may carry (Anthropic's limit)."""


class Part(BaseModel):
    """One section of a message: ``cache`` marks the end of a prefix that later requests
    send again unchanged (a prompt-cache breakpoint)."""

    model_config = ConfigDict(frozen=True)

    text: str
    cache: bool = False


class ChatMessage(BaseModel):
    """One message. ``parts``, when given, are ``content`` cut into sections (their texts
    joined are ``content``): adapters that place cache breakpoints (Anthropic) send one
    content block per part; the others send ``content``. Build one from parts with
    ``ChatMessage.of``. Raises ``ValueError`` when the parts do not join to ``content``."""

    model_config = ConfigDict(frozen=True)

    role: Literal["user", "assistant"]
    content: str
    parts: tuple[Part, ...] = ()

    @model_validator(mode="after")
    def _parts_are_content(self) -> Self:
        if self.parts and "".join(p.text for p in self.parts) != self.content:
            raise ValueError("a message's parts must join to its content")
        return self

    @classmethod
    def of(cls, role: Literal["user", "assistant"], parts: Sequence[Part]) -> ChatMessage:
        """A message made of ``parts`` (empty ones dropped)."""
        kept = tuple(p for p in parts if p.text)
        return cls(role=role, content="".join(p.text for p in kept), parts=kept)


class ModelSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    temperature: float | None = None
    max_tokens: int = Field(8192, gt=0)
    timeout_s: float = Field(120.0, gt=0)


@dataclass(frozen=True, slots=True)
class ModelRequest(Generic[T]):
    """What a role asks of a model: prompts plus the pydantic type the answer must fit.

    ``cache_key`` groups requests that share a long prefix (a run's step across its
    rounds): sent as OpenAI's ``prompt_cache_key``. ``cache_system``: the system
    prompt is a prefix later requests send again (an Anthropic breakpoint ends it).
    Neither changes the answer, so neither is part of ``request_hash``.
    """

    system: str
    messages: tuple[ChatMessage, ...]
    output_type: type[T]
    settings: ModelSettings = field(default_factory=ModelSettings)
    cache_key: str | None = None
    cache_system: bool = False
    _hashes: dict[str, str] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def request_hash(self, model_name: str) -> str:
        """Stable hash of (model, request): the response-cache key and replay key.

        SHA-256 over the model name, the system prompt, each message's role and
        content (each part length-prefixed, so no two requests frame alike), the
        settings that change the answer (``timeout_s`` does not) and the output type's
        JSON schema. What only steers the provider's prompt cache (``parts``,
        ``cache_key``, ``cache_system``) is left out: it never changes the answer.
        Computed on every model call, so it hashes the text itself rather than a JSON
        rendering of it (~5x cheaper), and once per model name (the request is
        immutable).
        """
        known = self._hashes.get(model_name)
        if known is not None:
            return known
        h = hashlib.sha256(_HASH_VERSION)
        _part(h, model_name)
        _part(h, self.system)
        for m in self.messages:
            _part(h, m.role)
            _part(h, m.content)
        h.update(_settings_digest(self.settings))
        h.update(_schema_digest(self.output_type))
        self._hashes[model_name] = digest = h.hexdigest()
        return digest


_HASH_VERSION = b"swarmbus.request/3\x00"


def _part(h: Any, text: str) -> None:
    data = text.encode()
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


@functools.lru_cache(maxsize=256)
def _settings_digest(settings: ModelSettings) -> bytes:
    return hashlib.sha256(settings.model_dump_json(exclude={"timeout_s"}).encode()).digest()


@functools.lru_cache(maxsize=256)
def schema_text(output_type: type[BaseModel]) -> str:
    """The JSON schema of ``output_type`` as compact, sorted JSON (cached: building a
    schema costs ~300 us and pydantic does not cache it; a type's is fixed)."""
    return json.dumps(output_type.model_json_schema(), sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=256)
def _schema_digest(output_type: type[BaseModel]) -> bytes:
    return hashlib.sha256(schema_text(output_type).encode()).digest()


@dataclass(frozen=True, slots=True)
class ModelResponse(Generic[T]):
    """A validated output plus its provenance (provider, model, tokens, cost, latency, hash).

    ``finish_reasons``: why the model stopped, in the vendor's words (OpenAI's
    ``finish_reason``, Anthropic's ``stop_reason``, Gemini's candidate ``finish_reason``),
    for the answer used; empty when unknown (offline models, a cache hit). Not part of
    the request hash nor of what the response cache stores."""

    output: T
    provenance: Provenance
    finish_reasons: tuple[str, ...] = ()

    @property
    def usage(self) -> Usage:
        return self.provenance.usage()


class Model(ABC):
    """A model answering typed requests.

    ``name`` is the ``provider:model`` string used in config. Implementations
    raise ``ModelError`` subclasses (see ``swarmbus.agents.models``), book every
    provider call into the current ``Ledger`` (``before_call`` before it,
    ``record`` after every billed answer), and close only the SDK clients they
    created, in ``aclose``.
    """

    name: str

    @abstractmethod
    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        """Answer ``request`` with a validated output and its provenance.

        Raises a ``ModelError`` (``permanent`` says whether retrying can help,
        ``usage`` what the failed calls were billed), or whatever the current
        ledger's check raised to stop a call, unchanged.
        """

    async def prepare(self) -> None:
        """Make the first call fast: import the SDK and create its client, with no
        network call. Idempotent; ``complete`` awaits it itself when it was not
        called. A daemon calls it in the background once it reports ready."""
        return None

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
