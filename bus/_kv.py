"""A small key-value face over a JetStream bucket (response cache, cancel flags, liveness)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from ._settings import StreamSettings
from ._store import StoreUnavailableError, storage_problem
from ._streams import while_settling

if TYPE_CHECKING:
    from ._streams import Streams


class Connection(Protocol):
    """What watching a bucket needs of a connection (``Bus`` has both)."""

    nc: NATS
    reconnects: int

__all__ = ["Buckets", "Connection", "KeyValueStore", "WatchedKeys", "open_bucket"]

log = structlog.get_logger("swarmbus.bus")


_STREAM_NOT_FOUND = 10059
_WRONG_LAST_SEQUENCE = 10071


def _bucket_gone(e: BaseException) -> bool:
    """Whether ``e`` says the bucket's stream is gone (not a missing key)."""
    if isinstance(e, nats.js.errors.KeyValueError):
        return False
    if isinstance(e, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError |
                  nats.js.errors.BucketNotFoundError):
        return True
    return isinstance(e, nats.js.errors.NotFoundError) and e.err_code == _STREAM_NOT_FOUND


class KeyValueStore:
    """Bytes in, bytes out; a missing or deleted key reads as ``None``.

    With ``reopen`` (what ``Bus.key_value`` passes), a bucket deleted behind our
    back is re-created on the next operation, with a warning, and the operation
    retried once.
    """

    def __init__(self, kv: KeyValue, *, reopen: Callable[[], Awaitable[KeyValue]] | None = None,
                 ) -> None:
        self._kv = kv
        self._reopen = reopen
        self.recreated = 0

    @property
    def bucket(self) -> str:
        return str(self._kv._name)

    async def _heal(self, e: BaseException) -> bool:
        if self._reopen is None or not _bucket_gone(e):
            return False
        log.warning("key-value bucket was deleted: re-creating it", bucket=self.bucket,
                    error=repr(e))
        self._kv = await self._reopen()
        self.recreated += 1
        return True

    async def get(self, key: str) -> bytes | None:
        got = await self.entry(key)
        return None if got is None else got[0]

    async def entry(self, key: str) -> tuple[bytes, int] | None:
        """The value of ``key`` and its revision (for ``swap``), or None when it has none."""
        for attempt in (0, 1):
            try:
                entry = await self._kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None
            except nats.errors.Error as e:
                if attempt or not await self._heal(e):
                    raise
                continue
            return entry.value or b"", int(entry.revision or 0)
        return None  # pragma: no cover - the loop returns or raises

    async def swap(self, key: str, value: bytes, revision: int) -> int | None:
        """Compare-and-set: store ``value`` only if ``key`` is still at ``revision`` (0:
        only if it has no value yet). Returns the new revision, or None when another
        writer came first (read it again and retry)."""
        try:
            if revision == 0:
                return int(await self._kv.create(key, value))
            return int(await self._kv.update(key, value, last=revision))
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            return None
        except nats.js.errors.APIError as e:
            if e.err_code == _WRONG_LAST_SEQUENCE:
                return None
            raise

    async def put(self, key: str, value: bytes) -> None:
        """Raises ``StoreUnavailableError`` when the server cannot store it now."""
        try:
            try:
                await self._kv.put(key, value)
            except nats.errors.Error as e:
                if not await self._heal(e):
                    raise
                await self._kv.put(key, value)
        except nats.js.errors.APIError as e:
            problem = storage_problem(e)
            if problem is None:
                raise
            raise StoreUnavailableError(
                f"bucket {self.bucket} cannot store now ({e.description or e.err_code}): "
                + ("free space or raise the server's max_file_store" if problem == "full"
                   else "its stream is unavailable"),
                stream=f"KV_{self.bucket}", reason=problem, code=e.err_code) from None

    async def delete(self, key: str) -> None:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            try:
                await self._kv.delete(key)
            except nats.errors.Error as e:
                if not await self._heal(e):
                    raise

    async def keys(self) -> list[str]:
        for attempt in (0, 1):
            try:
                return list(await self._kv.keys())
            except nats.js.errors.NoKeysError:
                return []
            except nats.errors.Error as e:
                if attempt or not await self._heal(e):
                    raise
        return []  # pragma: no cover


class WatchedKeys:
    """A bucket's keys mirrored in this process, kept current by the bucket's own
    messages: a membership test costs no round trip to the server.

    Used for cancel flags, which are checked before every model call. After a
    reconnect (messages may have been missed) the mirror is re-read from the
    bucket on the next check.
    """

    def __init__(self, bus: Connection, store: KeyValueStore) -> None:
        self._bus = bus
        self._store = store
        self._prefix = f"$KV.{store.bucket}."
        self._keys: set[str] = set()
        self._sub: Subscription | None = None
        self._seen_reconnects = -1
        self._watchers: dict[str, list[Callable[[], None]]] = {}

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
            self._added(key)

    def _added(self, key: str) -> None:
        self._keys.add(key)
        for callback in self._watchers.pop(key, ()):
            callback()

    async def _resync(self) -> None:
        self._seen_reconnects = self._bus.reconnects
        for key in await self._store.keys():
            self._added(key)

    def watch(self, key: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (once, on the event loop) as soon as ``key`` is in the bucket:
        now, if it is already in the mirror. Returns a function that stops watching.
        Used to abort a run's work the moment it is cancelled."""
        if key in self._keys:
            callback()
            return _nothing
        self._watchers.setdefault(key, []).append(callback)

        def stop() -> None:
            waiting = self._watchers.get(key)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(callback)
                if not waiting:
                    del self._watchers[key]

        return stop

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


def _nothing() -> None:
    return None


async def open_bucket(
    js: JetStreamContext, bucket: str, *, ttl_s: float | None, history: int,
    storage: Literal["file", "memory"] | None, stream: StreamSettings,
) -> Any:
    """Open ``bucket``, or create it with ``stream``'s replicas and storage (or
    ``storage``); an existing bucket made before the stream was scaled up follows it
    (never scaled down), one with other storage is used as it is, with a warning."""
    kind = storage or stream.storage
    want = api.StorageType.MEMORY if kind == "memory" else api.StorageType.FILE
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(
            bucket=bucket, ttl=ttl_s, history=history, replicas=stream.replicas, storage=want)
    info = await js.stream_info(f"KV_{bucket}")
    if storage is not None and info.config.storage != want:
        # Deleting it here would race with its other users: say how to change it.
        log.warning("bucket has other storage than asked: using it as it is (delete the "
                    "bucket to have it made anew)", bucket=bucket, wanted=kind)
    if (info.config.num_replicas or 1) < stream.replicas:
        info.config.num_replicas = stream.replicas
        await js.update_stream(info.config)
    return kv


class Buckets:
    """The namespace's key-value buckets (``swarm_<ns>_<name>``), made with the work
    stream's replicas and storage, opened once per process, made again when deleted."""

    def __init__(self, js: JetStreamContext, streams: Streams) -> None:
        self.js = js
        self.streams = streams
        self._open: dict[str, KeyValueStore] = {}

    def bucket(self, name: str) -> str:
        """The bucket of ``name``. Raises ``ValueError`` unless it is lower-case letters
        and digits (so ``x-y`` and ``x_y`` never share one)."""
        if not re.fullmatch(r"[a-z0-9]{1,32}", name):
            raise ValueError(f"bucket names are lower-case letters and digits, got {name!r}")
        return f"swarm_{self.streams.namespace}_{name}"

    async def key_value(
        self, name: str, *, ttl_s: float | None = None, history: int = 1,
        storage: Literal["file", "memory"] | None = None,
    ) -> KeyValueStore:
        """``Bus.key_value`` (which documents it)."""
        bucket = self.bucket(name)
        store = self._open.get(bucket)
        if store is None:
            async def reopen() -> Any:
                return await while_settling(
                    lambda: open_bucket(self.js, bucket, ttl_s=ttl_s, history=history,
                                        storage=storage, stream=self.streams.settings),
                    f"bucket {bucket}")

            store = KeyValueStore(await reopen(), reopen=reopen)
            self._open[bucket] = store
        return store

    async def find(self, name: str) -> KeyValueStore | None:
        """``Bus.find_key_value`` (which documents it)."""
        bucket = self.bucket(name)
        known = self._open.get(bucket)
        if known is not None:
            return known
        try:
            return KeyValueStore(await self.js.key_value(bucket))
        except nats.js.errors.BucketNotFoundError:
            return None
