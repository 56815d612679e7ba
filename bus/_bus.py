"""The connection to one namespace: stream set-up, publish, key-value, stream reads."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from pydantic import BaseModel, ConfigDict, Field

from swarmbus.protocols import (
    ExternalError,
    Message,
    SwarmbusError,
    advisory_stream_name,
    check_namespace,
    namespace_filter,
    stream_name,
    subject,
    topic_filter,
    workflow_filter,
)

from ._codec import DecodeError, Envelope, decode, encode
from ._connect import NatsSettings, connect
from ._kv import KeyValueStore
from ._secrets import scrub, scrub_bytes

__all__ = [
    "EXPECT_FIRST",
    "Bus",
    "ConsumerSettings",
    "PayloadTooLargeError",
    "PublishResult",
    "StoredMessage",
    "StreamSettings",
    "SubjectTakenError",
]

_WRONG_LAST_SEQUENCE = 10071
EXPECT_FIRST = "Nats-Expected-Last-Subject-Sequence"
"""The JetStream header a ``first=True`` publish sets to ``0``; the stored message keeps it."""

log = structlog.get_logger("swarmbus.bus")


class PayloadTooLargeError(SwarmbusError, ValueError):
    """A message larger than the server or the stream accepts."""


class SubjectTakenError(SwarmbusError):
    """A publish with ``first=True`` found a message already on its subject
    (``last_seq``): the server refused the second one."""

    def __init__(self, subject: str, last_seq: int) -> None:
        super().__init__(f"{subject} already holds a message (stream sequence {last_seq})")
        self.subject = subject
        self.last_seq = last_seq


class StreamSettings(BaseModel):
    """The namespace's stream (the work queue and the audit trail)."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(1, ge=1, le=5, description="3 in a cluster.")
    max_age_s: float = Field(30 * 24 * 3600, ge=0, description="0 keeps messages forever.")
    max_msg_bytes: int = Field(1024 * 1024, gt=0)
    duplicate_window_s: float = Field(
        600, gt=0, description="De-duplication window for Nats-Msg-Id; covers redeliveries."
    )
    storage: Literal["file", "memory"] = "file"


class ConsumerSettings(BaseModel):
    """One agent type's durable consumer, and how a replica pulls from it."""

    model_config = ConfigDict(extra="forbid")

    ack_wait_s: float = Field(30, gt=0)
    max_deliver: int = Field(5, ge=1)
    max_ack_pending: int = Field(1000, ge=1)
    concurrency: int = Field(16, ge=1, description="Handlers in flight per replica.")
    batch: int = Field(100, ge=1, description="Largest pull request.")
    retry_delay_s: float = Field(1.0, ge=0, description="First nak delay; doubles per delivery.")
    max_retry_delay_s: float = Field(60.0, ge=0)
    max_body_bytes: int = Field(512 * 1024, gt=0, description="Larger bodies are dead-lettered.")

    def retry_delay(self, delivered: int) -> float:
        """Seconds to wait before redelivering a message delivered ``delivered`` times:
        ``retry_delay_s`` doubling per delivery, at most ``max_retry_delay_s``."""
        base = self.retry_delay_s * math.pow(2, max(0, delivered - 1))
        return min(base, self.max_retry_delay_s)


@dataclass(frozen=True, slots=True)
class PublishResult:
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from the stream (for trails and late readers)."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    time: str | None = None

    def decode(self) -> Envelope[Message]:
        return decode(self.subject, self.data, self.headers, fallback_id=f"seq-{self.seq}")

    def try_decode(self) -> Envelope[Message] | None:
        try:
            return self.decode()
        except DecodeError:
            return None


class Bus:
    """NATS + JetStream for one namespace.

    Build with ``await Bus.connect(settings, namespace=...)`` (which also sets
    up the stream), use as an async context manager, close with ``aclose``.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        namespace: str = "default",
        stream: StreamSettings | None = None,
        owns_connection: bool = True,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=10.0)
        self.namespace = check_namespace(namespace)
        self.stream = stream or StreamSettings()
        self.stream_name = stream_name(namespace)
        self.advisory_stream = advisory_stream_name(namespace)
        self._owns = owns_connection
        self.reconnects = 0
        self._closing = False
        self._kv: dict[str, KeyValueStore] = {}

    @classmethod
    async def connect(
        cls,
        settings: NatsSettings | str | None = None,
        *,
        namespace: str = "default",
        stream: StreamSettings | None = None,
        setup: bool = True,
    ) -> Bus:
        """Connect and (by default) create or update the namespace's streams.

        Raises ``BusUnavailableError`` when NATS cannot be reached in time.
        """
        if isinstance(settings, str):
            settings = NatsSettings(servers=settings)  # "nats://a:4222,nats://b:4222" too
        holder: list[Bus] = []

        async def reconnected() -> None:
            if holder:
                holder[0].reconnects += 1
            log.info("nats reconnected")

        async def disconnected() -> None:
            if holder and not holder[0]._closing:  # not while still connecting
                log.warning("nats disconnected")

        nc = await connect(settings, reconnected_cb=reconnected, disconnected_cb=disconnected)
        bus = cls(nc, namespace=namespace, stream=stream)
        holder.append(bus)
        if setup:
            try:
                await bus.setup()
            except BaseException:
                await bus.aclose()
                raise
        return bus

    async def setup(self) -> None:
        """Create or update the stream and the advisory stream (idempotent).

        Only settings given explicitly change an existing stream: a process that
        leaves a field unset (a client without swarm.yaml) adopts the stream's
        current value instead of "correcting" the daemon's (e.g. scaling R3 to R1).
        """
        try:
            current: api.StreamConfig | None = (await self.js.stream_info(self.stream_name)).config
        except nats.js.errors.NotFoundError:
            current = None
        if current is not None:
            self.stream = _adopt(self.stream, current)
        s = self.stream
        storage = api.StorageType.FILE if s.storage == "file" else api.StorageType.MEMORY
        await self._ensure_stream(
            api.StreamConfig(
                name=self.stream_name,
                subjects=[namespace_filter(self.namespace)],
                retention=api.RetentionPolicy.LIMITS,
                storage=storage,
                num_replicas=s.replicas,
                max_age=s.max_age_s or None,
                max_msg_size=s.max_msg_bytes,
                duplicate_window=s.duplicate_window_s,
                allow_direct=True,
            ),
            current,
        )
        advisories = api.StreamConfig(
            name=self.advisory_stream,
            subjects=[f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream_name}.*"],
            max_msg_size=64 * 1024,
            duplicate_window=120,
            retention=api.RetentionPolicy.LIMITS,
            storage=storage,
            num_replicas=s.replicas,
            max_age=7 * 24 * 3600,
        )
        try:
            current = (await self.js.stream_info(self.advisory_stream)).config
        except nats.js.errors.NotFoundError:
            current = None
        await self._ensure_stream(advisories, current)

    async def _ensure_stream(
        self, config: api.StreamConfig, current: api.StreamConfig | None
    ) -> None:
        """Create the stream, or update it where ``config`` differs from ``current``."""
        if current is None:
            try:
                await self.js.add_stream(config)
                return
            except nats.js.errors.BadRequestError:  # created concurrently
                assert config.name is not None
                current = (await self.js.stream_info(config.name)).config
        if (
            current.subjects != config.subjects
            or current.num_replicas != config.num_replicas
            or current.max_msg_size != config.max_msg_size
            or (config.max_age is not None and current.max_age != config.max_age)
            or current.duplicate_window != config.duplicate_window
        ):
            await self.js.update_stream(config)

    async def ensure_consumer(
        self,
        durable: str,
        topics: list[str],
        settings: ConsumerSettings | None = None,
        *,
        stream: str | None = None,
        filters: list[str] | None = None,
        deliver_all: bool = False,
        update: bool = True,
    ) -> None:
        """Create (from "now", or from the start with ``deliver_all``) or update the
        durable pull consumer for ``topics``. ``update=False`` leaves an existing one."""
        s = settings or ConsumerSettings()
        want = filters or sorted(topic_filter(self.namespace, t) for t in topics)
        config = api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            deliver_policy=api.DeliverPolicy.ALL if deliver_all else api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait_s,
            max_deliver=s.max_deliver,
            max_ack_pending=s.max_ack_pending,
            filter_subjects=want if len(want) > 1 else None,
            filter_subject=want[0] if len(want) == 1 else None,
            num_replicas=self.stream.replicas,
        )
        stream = stream or self.stream_name
        try:
            info = await self.js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            await self.js.add_consumer(stream, config)
            return
        if not update:
            return
        cur = info.config
        have = sorted(cur.filter_subjects or ([cur.filter_subject] if cur.filter_subject else []))
        if (
            have != want
            or cur.ack_wait != s.ack_wait_s
            or cur.max_deliver != s.max_deliver
            or cur.max_ack_pending != s.max_ack_pending
            or (cur.num_replicas or 0) < self.stream.replicas  # scaled up since
        ):
            config.deliver_policy = cur.deliver_policy
            config.opt_start_seq = cur.opt_start_seq
            config.opt_start_time = cur.opt_start_time
            await self.js.add_consumer(stream, config)

    async def publish(
        self,
        workflow_id: str,
        topic: str,
        message: Message,
        *,
        msg_id: str,
        causation_id: str | None = None,
        sender: str | None = None,
        round: int = 0,
        model: str | None = None,
        workflow: str | None = None,
        first: bool = False,
    ) -> PublishResult:
        """Publish ``message`` on ``swarm.<ns>.<workflow_id>.<topic>`` through JetStream,
        awaiting the stream's ack.

        ``msg_id`` becomes ``Nats-Msg-Id``: a repeat within the duplicate window is
        stored once. ``workflow`` (a compiled workflow's hash) goes in the
        ``Swarm-Workflow`` header. ``first=True`` has the server refuse the message
        if its subject already holds one (``SubjectTakenError``): one result per
        workflow, one task per workflow id, whatever races. Raises ``ExternalError``
        if the stream does not confirm, ``PayloadTooLargeError`` if it is too big.
        """
        body, hdrs = encode(
            message, msg_id=msg_id, causation_id=causation_id, sender=sender, round=round,
            model=model, workflow=workflow,
        )
        subj = subject(self.namespace, workflow_id, topic)
        if first:
            hdrs[EXPECT_FIRST] = "0"
        return await self.publish_raw(subj, body, hdrs)

    async def publish_raw(
        self, subj: str, body: bytes, headers: dict[str, str] | None = None
    ) -> PublishResult:
        """Publish bytes through JetStream, every registered secret scrubbed from body
        and headers first (the one way out to the stream). Raises
        ``PayloadTooLargeError`` before sending what the server would refuse (it
        closes the connection for it), ``SubjectTakenError`` when an expected last
        subject sequence does not hold."""
        body = scrub_bytes(body)
        if headers:
            headers = {k: scrub(v) for k, v in headers.items()}
        size = len(body) + sum(len(k) + len(v) + 4 for k, v in (headers or {}).items()) + 12
        limit = min(self.nc.max_payload or size, self.stream.max_msg_bytes)
        if size > limit:
            raise PayloadTooLargeError(
                f"message of {size} bytes (body and headers) for {subj} exceeds the limit of "
                f"{limit} bytes (server max_payload / stream.max_msg_bytes)"
            )
        try:
            ack = await self.js.publish(subj, body, headers=headers, timeout=10.0)
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError) as e:
            raise ExternalError(f"JetStream did not confirm publish to {subj}: {e!r}") from e
        except nats.js.errors.BadRequestError as e:
            if e.err_code == _WRONG_LAST_SEQUENCE:
                last = (e.description or "").rsplit(":", 1)[-1].strip()
                raise SubjectTakenError(subj, int(last) if last.isdigit() else 0) from None
            raise
        return PublishResult(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def key_value(
        self, name: str, *, ttl_s: float | None = None, history: int = 1
    ) -> KeyValueStore:
        """Get or create the namespace's bucket ``name`` (same replicas as the stream).

        ``name`` is lower-case letters and digits; the bucket is
        ``swarm_<namespace>_<name>``, so two namespaces never share one (``x-y``
        and ``x_y`` included). Raises ``ValueError`` for another name.
        """
        if not re.fullmatch(r"[a-z0-9]{1,32}", name):
            raise ValueError(f"bucket names are lower-case letters and digits, got {name!r}")
        bucket = f"swarm_{self.namespace}_{name}"
        store = self._kv.get(bucket)
        if store is None:
            try:
                kv = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                kv = await self.js.create_key_value(
                    bucket=bucket, ttl=ttl_s, history=history, replicas=self.stream.replicas
                )
            else:  # made before the stream was scaled up: follow it (never scale down)
                info = await self.js.stream_info(f"KV_{bucket}")
                if (info.config.num_replicas or 1) < self.stream.replicas:
                    info.config.num_replicas = self.stream.replicas
                    await self.js.update_stream(info.config)
            store = KeyValueStore(kv)
            self._kv[bucket] = store
        return store

    async def get(self, seq: int, *, stream: str | None = None) -> StoredMessage | None:
        try:
            raw = await self.js.get_msg(stream or self.stream_name, seq=seq)
        except nats.js.errors.NotFoundError:
            return None
        return _stored(raw)

    async def last(self, workflow_id: str, topic: str) -> StoredMessage | None:
        """The newest message of one workflow on one topic, or None."""
        try:
            raw = await self.js.get_msg(
                self.stream_name, subject=subject(self.namespace, workflow_id, topic)
            )
        except nats.js.errors.NotFoundError:
            return None
        return _stored(raw)

    async def first(self, workflow_id: str, topic: str) -> StoredMessage | None:
        """The oldest message of one workflow on one topic, or None."""
        try:
            raw = await self.js.get_msg(
                self.stream_name, seq=1, subject=subject(self.namespace, workflow_id, topic),
                next=True,
            )
        except nats.js.errors.NotFoundError:
            return None
        return _stored(raw)

    async def history(self, workflow_id: str, *, after_seq: int = 0) -> list[StoredMessage]:
        """Every stored message of one workflow, oldest first."""
        out: list[StoredMessage] = []
        seq = after_seq + 1
        filt = workflow_filter(self.namespace, workflow_id)
        while True:
            try:
                raw = await self.js.get_msg(self.stream_name, seq=seq, subject=filt, next=True)
            except nats.js.errors.NotFoundError:
                return out
            msg = _stored(raw)
            out.append(msg)
            seq = msg.seq + 1

    async def aclose(self) -> None:
        """Drain and close the connection if this bus opened it."""
        if self._owns and not self.nc.is_closed:
            self._closing = True
            try:
                with anyio.move_on_after(5):
                    await self.nc.drain()
            except (nats.errors.Error, OSError):
                pass
            if not self.nc.is_closed:
                await self.nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _adopt(settings: StreamSettings, current: api.StreamConfig) -> StreamSettings:
    """``settings`` with every field it leaves unset taken from the existing stream."""
    existing = {
        "replicas": current.num_replicas or 1,
        "max_age_s": current.max_age or 0.0,
        "max_msg_bytes": current.max_msg_size if (current.max_msg_size or 0) > 0 else None,
        "duplicate_window_s": current.duplicate_window or None,
        "storage": "memory" if current.storage == api.StorageType.MEMORY else "file",
    }
    unset = {
        k: v for k, v in existing.items() if k not in settings.model_fields_set and v is not None
    }
    return settings.model_copy(update=unset)


def _stored(raw: Any) -> StoredMessage:
    hdrs = {str(k): str(v) for k, v in (raw.headers or {}).items()}
    return StoredMessage(
        seq=int(raw.seq), subject=str(raw.subject), data=raw.data or b"", headers=hdrs,
        time=getattr(raw, "time", None),
    )
