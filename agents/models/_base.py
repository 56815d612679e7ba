"""The one seam between role agents and LLMs: ``Model.complete``."""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from swarmbus.protocols import Provenance, Usage

__all__ = [
    "ChatMessage",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
]

T = TypeVar("T", bound=BaseModel)


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["user", "assistant"]
    content: str


class ModelSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    temperature: float | None = None
    max_tokens: int = Field(8192, gt=0)
    timeout_s: float = Field(120.0, gt=0)


@dataclass(frozen=True, slots=True)
class ModelRequest(Generic[T]):
    """What a role asks of a model: prompts plus the pydantic type the answer must fit."""

    system: str
    messages: tuple[ChatMessage, ...]
    output_type: type[T]
    settings: ModelSettings = field(default_factory=ModelSettings)
    _hashes: dict[str, str] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def request_hash(self, model_name: str) -> str:
        """Stable hash of (model, request): the response-cache key and replay key.

        SHA-256 over the model name, the system prompt, each message's role and
        content (each part length-prefixed, so no two requests frame alike), the
        settings and the output type's JSON schema. Computed on every model call, so
        it hashes the text itself rather than a JSON rendering of it (~5x cheaper),
        and once per model name (the request is immutable).
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


_HASH_VERSION = b"swarmbus.request/2\x00"


def _part(h: Any, text: str) -> None:
    data = text.encode()
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


@functools.lru_cache(maxsize=256)
def _settings_digest(settings: ModelSettings) -> bytes:
    return hashlib.sha256(settings.model_dump_json().encode()).digest()


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
    """A validated output plus its provenance (provider, model, tokens, cost, latency, hash)."""

    output: T
    provenance: Provenance

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
