"""The connection to one namespace, and what it is composed of: its streams, its
publisher, its key-value buckets and its durable consumers (``Bus``)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

import anyio
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from swarmbus.protocols import Message, Meta, check_namespace

from ._connect import NatsSettings, connect
from ._durable import Consumers
from ._kv import Buckets, KeyValueStore
from ._publish import SCHEDULE, SCHEDULE_TARGET, Publisher, PublishResult
from ._reads import StoredMessage
from ._settings import ConsumerSettings, ConsumerStart, EnsuredConsumer, StreamSettings
from ._store import StoreGate, StoreUnavailableError
from ._streams import Streams

__all__ = ["SCHEDULE", "SCHEDULE_TARGET", "Bus", "StoredMessage"]

log = structlog.get_logger("swarmbus.bus")


class Bus:
    """NATS + JetStream for one namespace: a connection, and the four things it is
    composed of, each usable on its own:

    - ``streams`` (``Streams``): the namespace's streams, their settings in force, and
      messages read back (``get``, ``last``, ``first``, ``history``);
    - ``publisher`` (``Publisher``): the one way out to the streams (``publish``,
      ``publish_raw``, ``schedule``), its size limit and its store gate;
    - ``buckets`` (``Buckets``): the namespace's key-value buckets (``key_value``);
    - ``consumers`` (``Consumers``): durable consumers (``ensure_consumer``).

    The methods here are the everyday face of those. Build with ``await
    Bus.connect(settings, namespace=...)`` (which also sets up the streams), use as an
    async context manager, close with ``aclose`` (only a connection it opened).
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
        self.streams = Streams(self.js, self.namespace, stream or StreamSettings())
        self.publisher = Publisher(nc, self.js, self.streams)
        self.buckets = Buckets(self.js, self.streams)
        self.consumers = Consumers(self.streams)
        self._owns = owns_connection
        self.reconnects = 0
        """How often the connection came back after a loss (pull requests, watches and
        subscriptions on the server are gone after one)."""
        self._closing = False

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

    # -- what the components hold ------------------------------------------------------------

    @property
    def stream(self) -> StreamSettings:
        """The work stream's settings in force (an existing stream's, where this process
        was not configured otherwise)."""
        return self.streams.settings

    @property
    def stream_name(self) -> str:
        return self.streams.name

    @property
    def advisory_stream(self) -> str:
        return self.streams.advisory

    @property
    def schedules(self) -> bool:
        """Whether the server holds scheduled messages (nats-server 2.12+; see ``schedule``)."""
        return self.streams.schedules

    @property
    def gate(self) -> StoreGate:
        """Holds publishes the store cannot take now (see ``hold_publishes``)."""
        return self.publisher.gate

    @property
    def stalled(self) -> StoreUnavailableError | None:
        """Why this connection holds publishes now (None: the store takes them)."""
        return self.publisher.gate.stalled

    # -- streams -------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Create or update the work stream, the advisory stream and the timer stream
        (idempotent).

        Only settings given explicitly change an existing stream: a process that
        leaves a field unset (a client without swarm.yaml) adopts the stream's
        current value instead of "correcting" the daemon's (e.g. scaling R3 to R1).
        While JetStream settles (a cluster starting), it retries for ``SETTLE_S``.
        """
        await self.streams.setup()

    async def stream_full(self) -> bool:
        """Whether the stream is at its own ``max_bytes`` (the next message of the
        largest size would be refused). False when it has no such cap."""
        return await self.streams.full()

    async def get(self, seq: int, *, stream: str | None = None) -> StoredMessage | None:
        """The message at stream sequence ``seq``, or None."""
        return await self.streams.get(seq, stream=stream)

    async def last(self, workflow_id: str, topic: str) -> StoredMessage | None:
        """The newest message of one workflow on one topic, or None."""
        return await self.streams.last(workflow_id, topic)

    async def first(self, workflow_id: str, topic: str) -> StoredMessage | None:
        """The oldest message of one workflow on one topic, or None (a replica answers
        when it has it, the stream's leader when it does not)."""
        return await self.streams.first(workflow_id, topic)

    async def history(self, workflow_id: str, *, after_seq: int = 0) -> list[StoredMessage]:
        """Every stored message of one workflow, oldest first."""
        return await self.streams.history(workflow_id, after_seq=after_seq)

    async def on_topic(self, topic: str, *, after_seq: int = 0) -> list[StoredMessage]:
        """Every workflow's stored messages on ``topic`` (``result``...), oldest first."""
        return await self.streams.on_topic(topic, after_seq=after_seq)

    # -- consumers -----------------------------------------------------------------------------

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
        return await self.consumers.ensure(
            durable, topics, settings, stream=stream, filters=filters, start=start,
            after_seq=after_seq, end_topics=end_topics, update=update, sender=sender)

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self,
        workflow_id: str,
        topic: str,
        message: Message,
        meta: Meta,
        *,
        first: bool = False,
        expect_last_seq: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PublishResult:
        """Publish ``message`` on ``swarm.<ns>.<workflow_id>.<topic>`` through JetStream,
        awaiting the stream's ack; ``meta`` (``swarmbus.protocols.Meta``) becomes its
        headers, ``headers`` are extra ones.

        ``meta.msg_id`` becomes ``Nats-Msg-Id``: a repeat within the duplicate window is
        stored once. ``first=True`` has the server refuse the message if its subject
        already holds one (``SubjectTakenError``): one result per workflow, one task per
        workflow id, whatever races; ``expect_last_seq`` if the subject's last message
        is not at that stream sequence (a resumed run's result supersedes only the one
        it resumed from). Raises ``ExternalError`` if the stream does not confirm,
        ``PayloadTooLargeError`` if it is too big.
        """
        return await self.publisher.publish(workflow_id, topic, message, meta, first=first,
                                            expect_last_seq=expect_last_seq, headers=headers)

    async def schedule(
        self, workflow_id: str, topic: str, message: Message, meta: Meta, *, at: datetime,
        target: str, confirm: bool = True,
    ) -> PublishResult | None:
        """Have the server publish ``message`` on ``target`` (a topic of the same
        workflow) at ``at``: it is held in the namespace's timer stream on ``topic``
        (header ``Nats-Schedule: @at ...``) until then, and a later schedule on ``topic``
        replaces it; the namespace's stream takes it when it fires (only ``deadline``
        is taken so far). ``confirm=False`` does not wait for the stream's ack (cheaper,
        but a store that cannot take it then drops it unseen). Returns None, publishing
        nothing, when the server cannot schedule (``schedules`` is False)."""
        return await self.publisher.schedule(workflow_id, topic, message, meta, at=at,
                                             target=target, confirm=confirm)

    async def publish_raw(
        self, subj: str, body: bytes, headers: dict[str, str] | None = None
    ) -> PublishResult:
        """Publish bytes through JetStream, every registered secret scrubbed first from
        the body and from the headers that are not protocol (the one way out to the
        stream; ``subj`` and the envelope's and server's headers pass as they are, see
        ``register_secret``). Raises ``PayloadTooLargeError`` before sending what the
        server would refuse (it closes the connection for it), ``SubjectTakenError``
        when an expected last subject sequence does not hold, ``StoreUnavailableError``
        when the store cannot take it now (full, offline) — except in a task that holds
        publishes (a consumer's handlers, see ``hold_publishes``), where it waits,
        retrying, until the store takes it. A deleted stream is re-created (with a
        warning); one that exists but takes no message yet (a cluster still spreading
        the news of a new stream) is waited for, up to 3 s (``publish_once``)."""
        return await self.publisher.publish_raw(subj, body, headers)

    async def store_available(self) -> None:
        """Return once no publish of this bus is held for a full or missing store."""
        await self.publisher.gate.available()

    # -- buckets -------------------------------------------------------------------------------

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
        return await self.buckets.key_value(name, ttl_s=ttl_s, history=history,
                                            storage=storage)

    async def find_key_value(self, name: str) -> KeyValueStore | None:
        """The namespace's bucket ``name`` if it exists (None: not made yet); never makes
        it, so a client that only reads does not create buckets with its settings."""
        return await self.buckets.find(name)

    # -- lifecycle -----------------------------------------------------------------------------

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
                    if not self.nc.is_closed and self.nc.is_connected:
                        # A drain cut short (a forced stop) leaves what was just written,
                        # such as the naks of work in flight, unsent: send it first.
                        with contextlib.suppress(nats.errors.Error, OSError, RuntimeError):
                            await self.nc.flush(timeout=1)
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
