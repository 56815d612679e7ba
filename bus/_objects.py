"""Large artifacts by reference: bytes in the namespace's JetStream object store.

A work message carries every artifact of its workflow; one that would make the
message too large is put in the ``artifacts`` object store under its SHA-256
(content-addressed, so a redelivered step stores it once) and the message
carries an ``ArtifactRef`` instead.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
import structlog
from nats.js import api
from nats.js.object_store import ObjectStore

from swarmbus.protocols import ArtifactRef, ExternalError

from ._store import storage_problem, store_error
from ._streams import while_settling

if TYPE_CHECKING:
    from ._bus import Bus
    from ._kv import Buckets
    from ._store import StoreGate

__all__ = ["OBJECTS_BUCKET", "ArtifactStore"]

log = structlog.get_logger("swarmbus.bus")

OBJECTS_BUCKET = "artifacts"


class ArtifactStore:
    """Put and get artifact bytes by reference (``await ArtifactStore.open(bus)``).

    Objects live as long as the stream keeps messages (``stream.max_age_s``), with
    the stream's replicas. A bucket deleted behind our back is made again (with a
    warning); a put the store cannot take now waits like a publish does in a
    consumer's handler (see ``hold_publishes``), else raises
    ``StoreUnavailableError``. Raises ``ExternalError`` when an object is missing.
    """

    def __init__(self, store: ObjectStore, bucket: str, buckets: Buckets | None = None,
                 gate: StoreGate | None = None) -> None:
        self._store = store
        self.bucket = bucket
        self._buckets = buckets
        self._gate = gate

    @classmethod
    async def open(cls, bus: Bus) -> ArtifactStore:
        """The namespace's artifact store (made with the work stream's replicas and
        storage when missing)."""
        bucket = f"swarm_{bus.namespace}_{OBJECTS_BUCKET}"
        return cls(await _open(bus.buckets, bucket), bucket, bus.buckets, bus.publisher.gate)

    async def put(self, data: bytes, *, media_type: str = "application/json") -> ArtifactRef:
        """Store ``data``; returns its reference (the same data stores once)."""
        digest = hashlib.sha256(data).hexdigest()

        async def attempt() -> None:
            try:
                try:
                    await self._store.get_info(digest)
                except nats.js.errors.ObjectNotFoundError:
                    await self._store.put(digest, data)
            except nats.js.errors.APIError as e:
                if self._buckets is None or storage_problem(e) is None:
                    raise
                raise await store_error(self._buckets.js, self._buckets.streams.name,
                                        e) from None

        async def healing() -> None:
            try:
                await attempt()
            except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError,
                    nats.js.errors.BucketNotFoundError) as e:
                if self._buckets is None:
                    raise
                log.warning("object store bucket was deleted: re-creating it",
                            bucket=self.bucket, error=repr(e))
                self._store = await _open(self._buckets, self.bucket)
                await attempt()

        if self._gate is None:
            await healing()
        else:
            await self._gate.run(healing)
        return ArtifactRef(bucket=OBJECTS_BUCKET, key=digest, size=len(data),
                           media_type=media_type)

    async def get(self, ref: ArtifactRef) -> bytes:
        """The bytes ``ref`` points at, checked against its digest."""
        try:
            result = await self._store.get(ref.key)
        except nats.js.errors.ObjectNotFoundError:
            raise ExternalError(f"artifact {ref.key} is gone from {self.bucket} "
                                "(expired or deleted)") from None
        data = result.data or b""
        if hashlib.sha256(data).hexdigest() != ref.key:
            raise ExternalError(f"artifact {ref.key} in {self.bucket} does not match its digest")
        return data


async def _open(buckets: Buckets, bucket: str) -> ObjectStore:
    """Open the bucket, or create it; retried while JetStream settles (a cluster that has
    just started, or is electing leaders, may not place a stream yet), like the stream
    and the key-value buckets."""
    return await while_settling(lambda: _open_once(buckets, bucket), f"object store {bucket}")


async def _open_once(buckets: Buckets, bucket: str) -> ObjectStore:
    settings = buckets.streams.settings
    try:
        return await buckets.js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await buckets.js.create_object_store(bucket, config=api.ObjectStoreConfig(
            bucket=bucket, ttl=settings.max_age_s or None, replicas=settings.replicas,
            storage=api.StorageType.FILE if settings.storage == "file"
            else api.StorageType.MEMORY))
