"""The connection to one namespace: stream set-up, publish, key-value, stream reads."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from swarmbus.protocols import (
    Message,
    advisory_stream_name,
    check_namespace,
    stream_name,
    subject,
    timer_subject,
    workflow_filter,
)

from ._codec import encode
from ._connect import NatsSettings, connect
from ._durable import ensure_durable
from ._kv import KeyValueStore, open_bucket
from ._publish import EXPECT_FIRST, PublishResult, check_size, publish_once
from ._reads import StoredMessage, read_all, read_one
from ._secrets import scrub_bytes, scrub_headers
from ._settings import (
    ConsumerSettings,
    ConsumerStart,
    EnsuredConsumer,
    StreamSettings,
    adopt_stream,
)
from ._store import (
    StoreGate,
    StoreUnavailableError,
    stream_bytes,
)
from ._streams import (
    advisory_config,
    drop_legacy_advisories,
    ensure_stream,
    settling,
    stream_config,
    timer_config,
    while_settling,
)

__all__ = ["SCHEDULE", "SCHEDULE_TARGET", "Bus", "StoredMessage"]

SCHEDULE = "Nats-Schedule"
SCHEDULE_TARGET = "Nats-Schedule-Target"

log = structlog.get_logger("swarmbus.bus")


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
        self.gate = StoreGate()
        """Holds publishes the store cannot take now (see ``hold_publishes``)."""
        self._healing: anyio.Lock = anyio.Lock()
        self._direct_gets = True  # until the stream turns out not to allow them
        self.schedules = False
        """Whether the stream holds scheduled messages (nats-server 2.12+; see ``schedule``)."""

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
        While JetStream settles (a cluster starting), it retries for ``SETTLE_S``.
        """
        await while_settling(self._setup_once, f"stream {self.stream_name}")

    async def _setup_once(self) -> None:
        try:
            current: api.StreamConfig | None = (await self.js.stream_info(self.stream_name)).config
        except nats.js.errors.NotFoundError:
            current = None
        if current is not None:
            self.stream = adopt_stream(self.stream, current)
        self.schedules = await self._setup_timers()
        await ensure_stream(self.js, stream_config(self.stream_name, self.namespace,
                                                   self.stream), current)
        advisories = advisory_config(self.advisory_stream, self.stream_name, self.stream)
        try:
            current = (await self.js.stream_info(self.advisory_stream)).config
        except nats.js.errors.NotFoundError:
            current = None
            self.advisory_stream = await drop_legacy_advisories(
                self.js, self.stream_name, advisories)
            if self.advisory_stream != advisories.name:
                return
        await ensure_stream(self.js, advisories, current)

    async def _setup_timers(self) -> bool:
        """Create or update the timer stream; False when the server cannot schedule."""
        config = timer_config(self.namespace, self.stream)
        assert config.name is not None
        try:
            try:
                current: api.StreamConfig | None = (await self.js.stream_info(config.name)).config
            except nats.js.errors.NotFoundError:
                current = None
            in_force = await ensure_stream(self.js, config, current)
        except nats.js.errors.APIError as e:
            if settling(e):
                raise
            log.warning("cannot make the timer stream", stream=config.name,
                        error=f"{type(e).__name__}: {e}")
            in_force = api.StreamConfig()
        if not in_force.allow_msg_schedules:
            log.warning("this nats-server does not schedule messages (2.12 and later do): "
                        "a run whose next step no agent takes ends at its deadline only "
                        "once an agent takes it", stream=config.name)
            return False
        return True

    async def ensure_consumer(
        self,
        durable: str,
        topics: list[str],
        settings: ConsumerSettings | None = None,
        *,
        stream: str | None = None,
        filters: list[str] | None = None,
        start: ConsumerStart = "new",
        after_seq: int = 0,
        end_topics: tuple[str, ...] = (),
        update: bool = False,
        sender: str | None = None,
    ) -> EnsuredConsumer:
        """Create the durable pull consumer for ``topics``, or adopt the existing one.

        A new consumer starts at ``start``: ``"new"`` (only what comes next),
        ``"all"`` (the oldest message), or ``"pending"``: the oldest message of its
        topics (after ``after_seq``) that ``sender`` (default ``durable``: the agent
        type whose outputs carry it as ``Swarm-Sender``) has not answered (no message
        with that ``Swarm-Sender`` caused by it) in a workflow with nothing on
        ``end_topics``; ``EnsuredConsumer.pending`` then lists what to handle of
        what was in the stream (the rest is done).

        An existing consumer's server-side settings (ack wait, max deliveries, max
        ack pending) win over ``settings`` — with a warning naming both — unless
        ``update=True``, which rewrites them. Its filters follow ``topics`` (a
        changed workflow) and its replicas the stream's. The settings in force are
        returned: a replica must use them (keep-alives follow the ack wait).
        """
        return await ensure_durable(
            self, durable, topics, settings, stream=stream, filters=filters, start=start,
            after_seq=after_seq, end_topics=end_topics, update=update, sender=sender)

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
        expect_last_seq: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PublishResult:
        """Publish ``message`` on ``swarm.<ns>.<workflow_id>.<topic>`` through JetStream,
        awaiting the stream's ack (``headers``: extra headers to send).

        ``msg_id`` becomes ``Nats-Msg-Id``: a repeat within the duplicate window is
        stored once. ``workflow`` (a compiled workflow's hash) goes in the
        ``Swarm-Workflow`` header. ``first=True`` has the server refuse the message
        if its subject already holds one (``SubjectTakenError``): one result per
        workflow, one task per workflow id, whatever races; ``expect_last_seq`` if the
        subject's last message is not at that stream sequence (a resumed run's result
        supersedes only the one it resumed from). Raises ``ExternalError``
        if the stream does not confirm, ``PayloadTooLargeError`` if it is too big.
        """
        body, hdrs = encode(
            message, msg_id=msg_id, causation_id=causation_id, sender=sender, round=round,
            model=model, workflow=workflow,
        )
        subj = subject(self.namespace, workflow_id, topic)
        if headers:
            hdrs.update(headers)
        if first or expect_last_seq is not None:
            hdrs[EXPECT_FIRST] = str(expect_last_seq or 0)
        return await self.publish_raw(subj, body, hdrs)

    async def schedule(
        self,
        workflow_id: str,
        topic: str,
        message: Message,
        *,
        at: datetime,
        target: str,
        msg_id: str,
        sender: str | None = None,
        workflow: str | None = None,
    ) -> PublishResult | None:
        """Have the server publish ``message`` on ``target`` (a topic of the same
        workflow) at ``at``: it is held in the namespace's timer stream on ``topic``
        (header ``Nats-Schedule: @at ...``) until then, and a later schedule on ``topic``
        replaces it; the namespace's stream takes it when it fires (only ``deadline``
        is taken so far). Returns None, publishing nothing, when the server cannot
        schedule (``schedules`` is False)."""
        if not self.schedules:
            return None
        body, hdrs = encode(message, msg_id=msg_id, sender=sender, workflow=workflow)
        hdrs[SCHEDULE] = "@at " + at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        hdrs[SCHEDULE_TARGET] = timer_subject(self.namespace, workflow_id, target)
        return await self.publish_raw(timer_subject(self.namespace, workflow_id, topic), body,
                                      hdrs)

    async def publish_raw(
        self, subj: str, body: bytes, headers: dict[str, str] | None = None
    ) -> PublishResult:
        """Publish bytes through JetStream, every registered secret scrubbed first from
        the body and from the headers that are not protocol (the one way out to the
        stream; ``subj`` and the envelope's and server's headers pass as they are, see
        ``register_secret``). Raises
        ``PayloadTooLargeError`` before sending what the server would refuse (it
        closes the connection for it), ``SubjectTakenError`` when an expected last
        subject sequence does not hold, ``StoreUnavailableError`` when the store
        cannot take it now (full, offline) — except in a task that holds publishes
        (a consumer's handlers, see ``hold_publishes``), where it waits, retrying,
        until the store takes it. A deleted stream is re-created (with a warning); one that
        exists but takes no message yet (a cluster still spreading the news of a new
        stream) is waited for, up to 3 s (``publish_once``)."""
        body = scrub_bytes(body)
        if headers:
            headers = scrub_headers(headers)
        limit = self.stream.max_msg_bytes
        if self.nc.max_payload:
            limit = min(limit, self.nc.max_payload)
        check_size(subj, body, headers, limit)
        return await self.gate.run(lambda: publish_once(
            self.js, subj, body, headers, stream=self.stream_name, heal=self._heal_stream))

    async def stream_full(self) -> bool:
        """Whether the stream is at its own ``max_bytes`` (the next message of the
        largest size would be refused). False when it has no such cap."""
        held, cap = await stream_bytes(self.js, self.stream_name)
        return bool(cap) and held + self.stream.max_msg_bytes > cap

    @property
    def stalled(self) -> StoreUnavailableError | None:
        """Why this connection holds publishes now (None: the store takes them)."""
        return self.gate.stalled

    async def store_available(self) -> None:
        """Return once no publish of this bus is held for a full or missing store."""
        await self.gate.available()

    async def _heal_stream(self, stream: str | None = None) -> bool:
        """Re-create the namespace's streams if ``stream`` (default: the namespace's) is
        gone, with a warning; True if it exists now."""
        async with self._healing:
            try:
                await self.js.stream_info(stream or self.stream_name)
                return True
            except nats.js.errors.NotFoundError:
                pass
            except (nats.errors.Error, OSError):
                return False
            log.warning("stream was deleted: re-creating it (its messages are gone; work "
                        "published from now on is kept)", stream=stream or self.stream_name)
            try:
                await self.setup()
            except (nats.errors.Error, OSError) as e:
                log.error("could not re-create the stream", stream=self.stream_name,
                          error=repr(e))
                return False
            return True

    async def key_value(
        self, name: str, *, ttl_s: float | None = None, history: int = 1,
        storage: Literal["file", "memory"] | None = None,
    ) -> KeyValueStore:
        """Get or create the namespace's bucket ``name`` (same replicas as the stream).

        ``name`` is lower-case letters and digits; the bucket is
        ``swarm_<namespace>_<name>``, so two namespaces never share one (``x-y``
        and ``x_y`` included). ``storage`` (of a bucket made now) defaults to the
        stream's; ``memory`` suits short-lived entries (liveness), which then stay
        writable when the file store is full. A bucket deleted later is re-created
        on next use (with a warning). Raises ``ValueError`` for another name.
        """
        if not re.fullmatch(r"[a-z0-9]{1,32}", name):
            raise ValueError(f"bucket names are lower-case letters and digits, got {name!r}")
        bucket = f"swarm_{self.namespace}_{name}"
        store = self._kv.get(bucket)
        if store is None:
            async def reopen() -> Any:
                return await while_settling(
                    lambda: open_bucket(self.js, bucket, ttl_s=ttl_s, history=history,
                                        storage=storage, stream=self.stream),
                    f"bucket {bucket}")

            store = KeyValueStore(await reopen(), reopen=reopen)
            self._kv[bucket] = store
        return store

    async def find_key_value(self, name: str) -> KeyValueStore | None:
        """The namespace's bucket ``name`` if it exists (None: not made yet); never makes
        it, so a client that only reads does not create buckets with its settings."""
        bucket = f"swarm_{self.namespace}_{name}"
        known = self._kv.get(bucket)
        if known is not None:
            return known
        try:
            return KeyValueStore(await self.js.key_value(bucket))
        except nats.js.errors.BucketNotFoundError:
            return None

    async def get(self, seq: int, *, stream: str | None = None) -> StoredMessage | None:
        """The message at stream sequence ``seq``, or None."""
        return await read_one(self.js, stream or self.stream_name, seq=seq)

    async def last(self, workflow_id: str, topic: str) -> StoredMessage | None:
        """The newest message of one workflow on one topic, or None."""
        return await read_one(self.js, self.stream_name,
                              subject=subject(self.namespace, workflow_id, topic))

    async def first(self, workflow_id: str, topic: str) -> StoredMessage | None:
        """The oldest message of one workflow on one topic, or None.

        Asked of any replica first (a direct get, cheap); a replica applies the
        stream in order, so a message it returns is the oldest. When it has none
        (none, or not yet), the stream's leader answers."""
        subj = subject(self.namespace, workflow_id, topic)
        if self._direct_gets:
            try:
                found = await read_one(self.js, self.stream_name, seq=1, next=True, subject=subj,
                                       direct=True)
            except nats.errors.NoRespondersError:
                self._direct_gets = False  # a stream made without allow_direct
            else:
                if found is not None:
                    return found
        return await read_one(self.js, self.stream_name, seq=1, next=True, subject=subj)

    async def history(self, workflow_id: str, *, after_seq: int = 0) -> list[StoredMessage]:
        """Every stored message of one workflow, oldest first."""
        return await read_all(self.js, self.stream_name,
                              workflow_filter(self.namespace, workflow_id), after_seq=after_seq)

    async def aclose(self) -> None:
        """Drain and close the connection if this bus opened it. The drain (at most 5 s)
        gives way to a cancellation; the close does not, so a cancelled owner still
        leaves no socket open."""
        if self._owns and not self.nc.is_closed:
            self._closing = True
            try:
                with anyio.move_on_after(5):
                    await self.nc.drain()
            except (nats.errors.Error, OSError):
                pass
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    if not self.nc.is_closed:
                        try:
                            await self.nc.close()
                        except (nats.errors.Error, OSError, RuntimeError) as e:
                            # The server is gone: nats-py (on uvloop) writes its last
                            # bytes to a transport already closed. Nothing is left open.
                            log.debug("connection closed with an error", error=repr(e))

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

