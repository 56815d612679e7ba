"""A small key-value face over a JetStream bucket (response cache, cancel flags, liveness)."""

from __future__ import annotations

import contextlib

import nats.js.errors
from nats.js.kv import KeyValue

__all__ = ["KeyValueStore"]


class KeyValueStore:
    """Bytes in, bytes out; a missing or deleted key reads as ``None``."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @property
    def bucket(self) -> str:
        return str(self._kv._name)

    async def get(self, key: str) -> bytes | None:
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return entry.value

    async def put(self, key: str, value: bytes) -> None:
        await self._kv.put(key, value)

    async def delete(self, key: str) -> None:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            await self._kv.delete(key)

    async def keys(self) -> list[str]:
        try:
            return list(await self._kv.keys())
        except nats.js.errors.NoKeysError:
            return []
