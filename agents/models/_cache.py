"""A response cache in front of any model, keyed by the hash of (workflow, model, request)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from swarmbus.bus import scrub_bytes
from swarmbus.protocols import Provenance, Usage

from ._base import Model, ModelRequest, ModelResponse, T
from ._ledger import current_ledger, tapped

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

    Scope: by default the key is the hash of (the current ledger's ``scope``,
    ``request.request_hash(model.name)``), the scope being the workflow id the
    runtime puts on the ledger. So a redelivered message of the same workflow
    does not pay the provider twice, while a resubmitted task (another
    workflow) gets fresh answers. ``shared=True`` shares answers across
    workflows (the key is the request hash alone); so does calling without a
    ledger, or with an empty scope.

    A hit returns the stored output with provenance ``from_cache=True``,
    ``calls=0``, zero tokens and ``cost_usd=0.0`` (nothing was spent now),
    ``latency_s`` the lookup time, the original provider, model and hash, and
    ``original_usage``: what filling the entry cost (every call booked while
    the wrapped model answered, fallback attempts included). The hit is booked
    into the current ledger; a ledger marked ``redelivery`` charges
    ``original_usage`` for it, because the attempt that paid never got to
    publish its spend. A miss calls ``model``, which books its own calls.
    Entries older than ``ttl_s`` (None: no limit beyond the store's own) are
    ignored. The store failing never fails a call: it is logged and treated as
    a miss. ``aclose`` closes the wrapped model; the store is borrowed.
    """

    def __init__(
        self,
        model: Model,
        store: ResponseStore,
        *,
        ttl_s: float | None = None,
        shared: bool = False,
    ) -> None:
        self.inner = model
        self.name = model.name
        self.store = store
        self.ttl_s = ttl_s
        self.shared = shared
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedModel({self.inner!r}{', shared=True' if self.shared else ''})"

    def key(self, request: ModelRequest[Any]) -> str:
        """The store key for ``request`` under the current ledger's scope (see above)."""
        base = request.request_hash(self.name)
        ledger = current_ledger()
        scope = "" if self.shared or ledger is None else ledger.scope
        if not scope:
            return base
        return hashlib.sha256(f"{scope}\n{base}".encode()).hexdigest()

    async def prepare(self) -> None:
        await self.inner.prepare()

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        started = time.perf_counter()
        key = self.key(request)
        hit = await self._lookup(key, request)
        if hit is not None:
            self.hits += 1
            output, provenance, paid = hit
            provenance = provenance.model_copy(
                update={
                    "original_usage": paid,
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
            ledger = current_ledger()
            if ledger is not None:
                await ledger.book(provenance)
            return ModelResponse(output=output, provenance=provenance)
        self.misses += 1
        with tapped() as tap:
            response = await self.inner.complete(request)
        paid = tap.usage if tap.records else response.provenance.usage()
        entry = {
            "v": _FORMAT,
            "stored_at": time.time(),
            "output": response.output.model_dump(mode="json"),
            "provenance": response.provenance.model_dump(mode="json"),
            "paid": paid.model_dump(mode="json"),
        }
        try:
            # The cache is stored like a message: no configured secret in it, whatever a
            # model echoed (a hit then serves what the stream would have held anyway).
            await self.store.put(key, scrub_bytes(json.dumps(entry).encode()))
        except Exception as exc:
            log.warning("model cache put failed for %s: %r", self.name, exc)
        return replace(response)

    async def _lookup(
        self, key: str, request: ModelRequest[T]
    ) -> tuple[T, Provenance, Usage] | None:
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
            provenance = Provenance.model_validate(entry["provenance"])
            paid = entry.get("paid")
            usage = Usage.model_validate(paid) if paid is not None else provenance.usage()
            return output, provenance, usage
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.warning("ignoring an unreadable model cache entry %s: %r", key, exc)
            return None

    async def aclose(self) -> None:
        await self.inner.aclose()
