"""A small key-value face over a JetStream bucket (response cache, cancel flags, liveness)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

if TYPE_CHECKING:
    from ._bus import Bus

__all__ = ["KeyValueStore", "WatchedKeys"]


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


class WatchedKeys:
    """A bucket's keys mirrored in this process, kept current by the bucket's own
    messages: a membership test costs no round trip to the server.

    Used for cancel flags, which are checked before every model call. After a
    reconnect (messages may have been missed) the mirror is re-read from the
    bucket on the next check.
    """

    def __init__(self, bus: Bus, store: KeyValueStore) -> None:
        self._bus = bus
        self._store = store
        self._prefix = f"$KV.{store.bucket}."
        self._keys: set[str] = set()
        self._sub: Subscription | None = None
        self._seen_reconnects = -1

    async def start(self) -> WatchedKeys:
        # Subscribe first, then read: a key put in between is seen by one or the other.
        self._sub = await self._bus.nc.subscribe(self._prefix + ">", cb=self._on_update)
        await self._resync()
        return self

    async def _on_update(self, msg: Msg) -> None:
        key = msg.subject[len(self._prefix):]
        op = (msg.headers or {}).get("KV-Operation")
        if op in ("DEL", "PURGE"):
            self._keys.discard(key)
        else:
            self._keys.add(key)

    async def _resync(self) -> None:
        self._seen_reconnects = self._bus.reconnects
        self._keys |= set(await self._store.keys())

    async def contains(self, key: str) -> bool:
        """Whether ``key`` is in the bucket (re-read after a reconnect)."""
        if self._bus.reconnects != self._seen_reconnects:
            await self._resync()
        return key in self._keys

    def contains_now(self, key: str) -> bool:
        """Whether ``key`` is in the mirror as it stands (no round trip, no resync)."""
        return key in self._keys

    async def aclose(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None and not self._bus.nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
