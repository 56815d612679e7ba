"""A response cache in front of any model, keyed by the hash of (model, request)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from typing import Protocol, runtime_checkable

from pydantic import ValidationError

from swarmbus.protocols import Provenance

from ._base import Model, ModelRequest, ModelResponse, T
from ._ledger import current_ledger

__all__ = ["CachedModel", "MemoryStore", "ResponseStore"]

log = logging.getLogger("swarmbus.models")

_FORMAT = 1


@runtime_checkable
class ResponseStore(Protocol):
    """What the cache needs of a store; ``swarmbus.bus``'s key-value buckets satisfy it."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> None: ...


class MemoryStore:
    """An in-process ``ResponseStore`` (a dict), for tests and single-process runs."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def put(self, key: str, value: bytes) -> None:
        self.data[key] = value


class CachedModel(Model):
    """Answers a request seen before from ``store`` instead of calling ``model``.

    The key is ``request.request_hash(model.name)``, so a redelivered message
    does not pay the provider twice. Entries older than ``ttl_s`` (None: no
    limit beyond the store's own) are ignored. A hit returns the stored output
    with provenance ``from_cache=True``, zero tokens and ``cost_usd=0.0``
    (nothing was spent now; the original call was accounted when it was made,
    and ``original_usage`` says what it cost, so a redelivered message whose
    first attempt paid but never published can still charge it),
    ``latency_s`` the lookup time, and the original provider, model and hash.
    The store failing never fails a call: it is logged and treated as a miss.
    ``aclose`` closes the wrapped model; the store is borrowed.
    """

    def __init__(self, model: Model, store: ResponseStore, *, ttl_s: float | None = None) -> None:
        self.inner = model
        self.name = model.name
        self.store = store
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedModel({self.inner!r})"

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        started = time.perf_counter()
        key = request.request_hash(self.name)
        ledger = current_ledger()
        if ledger is not None and ledger.scope:  # answers are the workflow's own by default
            key = hashlib.sha256(f"{ledger.scope}\x00{key}".encode()).hexdigest()
        hit = await self._lookup(key, request)
        if hit is not None:
            self.hits += 1
            output, provenance = hit
            provenance = provenance.model_copy(
                update={
                    "original_usage": provenance.original_usage or provenance.usage(),
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "cached_tokens": 0,
                    "cache_write_tokens": 0,
                    "reasoning_tokens": 0,
                    "calls": 0,
                    "estimated_calls": 0,
                    "cost_usd": 0.0,
                    "latency_s": time.perf_counter() - started,
                    "from_cache": True,
                }
            )
            return ModelResponse(output=output, provenance=provenance)
        self.misses += 1
        response = await self.inner.complete(request)
        entry = {
            "v": _FORMAT,
            "stored_at": time.time(),
            "output": response.output.model_dump(mode="json"),
            "provenance": response.provenance.model_dump(mode="json"),
        }
        try:
            await self.store.put(key, json.dumps(entry).encode())
        except Exception as exc:
            log.warning("model cache put failed for %s: %r", self.name, exc)
        return replace(response)

    async def _lookup(self, key: str, request: ModelRequest[T]) -> tuple[T, Provenance] | None:
        try:
            blob = await self.store.get(key)
        except Exception as exc:
            log.warning("model cache get failed for %s: %r", self.name, exc)
            return None
        if blob is None:
            return None
        try:
            entry = json.loads(blob)
            if entry.get("v") != _FORMAT:
                return None
            if self.ttl_s is not None and time.time() - float(entry["stored_at"]) > self.ttl_s:
                return None
            output = request.output_type.model_validate(entry["output"])
            return output, Provenance.model_validate(entry["provenance"])
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.warning("ignoring an unreadable model cache entry %s: %r", key, exc)
            return None

    async def aclose(self) -> None:
        await self.inner.aclose()
