"""Large artifacts by reference: bytes in the namespace's JetStream object store.

A work message carries every artifact of its workflow; one that would make the
message too large is put in the ``artifacts`` object store under its SHA-256
(content-addressed, so a redelivered step stores it once) and the message
carries an ``ArtifactRef`` instead.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js import api
from nats.js.object_store import ObjectStore

from swarmbus.protocols import ArtifactRef, ExternalError

if TYPE_CHECKING:
    from ._bus import Bus

__all__ = ["OBJECTS_BUCKET", "ArtifactStore"]

OBJECTS_BUCKET = "artifacts"


class ArtifactStore:
    """Put and get artifact bytes by reference (``await ArtifactStore.open(bus)``).

    Objects live as long as the stream keeps messages (``stream.max_age_s``), with
    the stream's replicas. Raises ``ExternalError`` when an object is missing.
    """

    def __init__(self, store: ObjectStore, bucket: str) -> None:
        self._store = store
        self.bucket = bucket

    @classmethod
    async def open(cls, bus: Bus) -> ArtifactStore:
        bucket = f"swarm_{bus.namespace}_{OBJECTS_BUCKET}"
        try:
            store = await bus.js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            store = await bus.js.create_object_store(bucket, config=api.ObjectStoreConfig(
                bucket=bucket, ttl=bus.stream.max_age_s or None,
                replicas=bus.stream.replicas,
                storage=api.StorageType.FILE if bus.stream.storage == "file"
                else api.StorageType.MEMORY))
        return cls(store, bucket)

    async def put(self, data: bytes, *, media_type: str = "application/json") -> ArtifactRef:
        """Store ``data``; returns its reference (the same data stores once)."""
        digest = hashlib.sha256(data).hexdigest()
        try:
            await self._store.get_info(digest)
        except nats.js.errors.ObjectNotFoundError:
            await self._store.put(digest, data)
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
