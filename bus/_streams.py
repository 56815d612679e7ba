"""The namespace's streams: their configurations, creating or updating them, and
``Streams``, what one process knows of them (settings in force, reads, healing)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext, api

from swarmbus.protocols import (
    advisory_stream_name,
    namespace_filter,
    stream_name,
    subject,
    timer_filter,
    timer_stream_name,
    topic_filter,
    topics,
    workflow_filter,
)

from ._reads import StoredMessage, read_all, read_one
from ._settings import StreamSettings, adopt_stream
from ._store import NO_PLACEMENT, storage_problem, stream_bytes

__all__ = [
    "SETTLE_S",
    "advisory_config",
    "drop_legacy_advisories",
    "ensure_stream",
    "settling",
    "stream_config",
    "timer_config",
    "timer_source",
    "while_settling",
]

log = structlog.get_logger("swarmbus.bus")

T = TypeVar("T")

SETTLE_S = 15.0
"""How long setting up a stream or bucket retries while JetStream settles (seconds)."""


def settling(e: Exception) -> bool:
    """A JetStream cluster that is starting or electing a leader: its API times out,
    is unavailable, or cannot place a stream yet. Worth a retry, not a failure."""
    if isinstance(e, nats.errors.TimeoutError):
        return True
    return isinstance(e, nats.js.errors.APIError) and (
        e.err_code == NO_PLACEMENT or storage_problem(e) == "unavailable")


async def while_settling(op: Callable[[], Awaitable[T]], what: str) -> T:
    """``op()``, again (backing off, with a warning) while JetStream is settling, for
    up to ``SETTLE_S`` seconds; any other error, or the last one, is raised."""
    deadline = time.monotonic() + SETTLE_S
    pause = 0.2
    while True:
        try:
            return await op()
        except (nats.errors.Error, nats.js.errors.Error) as e:
            if not settling(e) or time.monotonic() + pause > deadline:
                raise
            log.warning("JetStream not ready; retrying", what=what, retry_in_s=pause,
                        error=f"{type(e).__name__}: {e}")
            await anyio.sleep(pause)
            pause = min(pause * 2, 2.0)


def _storage(s: StreamSettings) -> api.StorageType:
    return api.StorageType.FILE if s.storage == "file" else api.StorageType.MEMORY


def stream_config(name: str, namespace: str, s: StreamSettings) -> api.StreamConfig:
    """The namespace's stream: every subject of the namespace, limits retention,
    discard new when full (a publish is refused, nothing stored is dropped)."""
    return api.StreamConfig(
        name=name,
        subjects=[namespace_filter(namespace)],
        retention=api.RetentionPolicy.LIMITS,
        storage=_storage(s),
        num_replicas=s.replicas,
        max_age=s.max_age_s or None,
        max_msg_size=s.max_msg_bytes,
        max_bytes=s.max_bytes or -1,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=s.duplicate_window_s,
        allow_direct=True,
        sources=[timer_source(namespace)],
    )


def timer_source(namespace: str) -> api.StreamSource:
    """What the namespace's stream takes from its timer stream: every fired ``deadline``,
    as ``swarm.<ns>.<workflow_id>.deadline``."""
    return api.StreamSource(
        name=timer_stream_name(namespace),
        subject_transforms=[api.SubjectTransform(
            src=timer_filter(namespace, topics.DEADLINE),
            dest=topic_filter(namespace, topics.DEADLINE).replace("*", "{{wildcard(1)}}"))])


def timer_config(namespace: str, s: StreamSettings) -> api.StreamConfig:
    """The namespace's timer stream. A run's deadline is a message the server publishes
    at the deadline (header ``Nats-Schedule``, nats-server 2.12+), so a run that no
    agent serves still ends. Scheduling needs a stream that may discard old messages,
    which the namespace's stream (discard new: nothing stored is ever dropped) is not,
    so timers live here and the namespace's stream sources what fires."""
    return api.StreamConfig(
        name=timer_stream_name(namespace),
        subjects=[timer_filter(namespace)],
        retention=api.RetentionPolicy.LIMITS,
        storage=_storage(s),
        num_replicas=s.replicas,
        max_age=s.max_age_s or None,
        discard=api.DiscardPolicy.OLD,
        duplicate_window=s.duplicate_window_s,
        allow_msg_schedules=True,
    )


def advisory_config(name: str, stream: str, s: StreamSettings) -> api.StreamConfig:
    """The stream that keeps ``stream``'s max-deliveries advisories (7 days), so one
    raised while no process listened is still dead-lettered."""
    return api.StreamConfig(
        name=name,
        subjects=[f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*"],
        max_msg_size=64 * 1024,
        duplicate_window=120,
        retention=api.RetentionPolicy.LIMITS,
        storage=_storage(s),
        num_replicas=s.replicas,
        max_age=7 * 24 * 3600,
    )


async def drop_legacy_advisories(
    js: JetStreamContext, stream: str, advisories: api.StreamConfig
) -> str:
    """Versions before 0.2 named the advisory stream ``SWARM_<NS>_ADVISORIES``, which
    is also the stream of namespace ``<ns>_advisories``: delete ours (its subjects
    say so) so the new one can take the advisories. Returns the advisory stream to
    use: the new one, or the old one when it cannot be deleted."""
    assert advisories.name is not None
    legacy = stream + "_ADVISORIES"
    try:
        info = await js.stream_info(legacy)
    except nats.js.errors.NotFoundError:
        return advisories.name
    if info.config.subjects != advisories.subjects:
        return advisories.name  # namespace <ns>_advisories's own stream: not ours
    log.warning("replacing the advisory stream of an older version",
                old=legacy, new=advisories.name)
    try:
        await js.delete_stream(legacy)
    except nats.errors.Error as e:  # e.g. not permitted: keep using the old one
        log.warning("could not delete the older advisory stream; using it",
                    stream=legacy, error=f"{type(e).__name__}: {e}")
        return legacy
    return advisories.name


async def ensure_stream(
    js: JetStreamContext, config: api.StreamConfig, current: api.StreamConfig | None
) -> api.StreamConfig:
    """Create the stream, or update it where ``config`` differs from ``current``; returns
    the configuration in force (a server that does not know a setting leaves it unset)."""
    if current is None:
        try:
            return (await js.add_stream(config)).config
        except nats.js.errors.BadRequestError as e:  # created concurrently
            if e.err_code == NO_PLACEMENT:
                raise
            assert config.name is not None
            current = (await js.stream_info(config.name)).config
    if (
        current.subjects != config.subjects
        or current.num_replicas != config.num_replicas
        or current.max_msg_size != config.max_msg_size
        or (config.max_age is not None and current.max_age != config.max_age)
        or current.duplicate_window != config.duplicate_window
        or (config.max_bytes or -1) != (current.max_bytes or -1)
        or (config.discard is not None and current.discard != config.discard)
        or (config.allow_msg_schedules and not current.allow_msg_schedules)
        or _sources(config) != _sources(current)
    ):
        return (await js.update_stream(config)).config
    return current


def _sources(config: api.StreamConfig) -> list[tuple[str | None, list[tuple[str, str]]]]:
    return [(src.name, [(t.src, t.dest) for t in src.subject_transforms or []])
            for src in config.sources or []]


class Streams:
    """The namespace's streams, as one process sees them: the work stream
    ``SWARM_<NS>`` (work, results, dead letters: the audit trail), its advisory stream
    and its timer stream; made or adopted (``setup``), made again when deleted
    (``heal``), and read back (``get``, ``last``, ``first``, ``history``).

    ``settings`` are the ones in force once set up: only what the process was
    configured with explicitly changes an existing stream.
    """

    def __init__(self, js: JetStreamContext, namespace: str, settings: StreamSettings) -> None:
        self.js = js
        self.namespace = namespace
        self.settings = settings
        self.name = stream_name(namespace)
        self.advisory = advisory_stream_name(namespace)
        self.schedules = False
        """Whether the server holds scheduled messages (nats-server 2.12+)."""
        self._healing = anyio.Lock()
        self._direct_gets = True  # until the stream turns out not to allow them

    async def setup(self) -> None:
        """Create or update the streams (idempotent); while JetStream settles (a cluster
        starting), retry for ``SETTLE_S``."""
        await while_settling(self._setup_once, f"stream {self.name}")

    async def _setup_once(self) -> None:
        try:
            current: api.StreamConfig | None = (await self.js.stream_info(self.name)).config
        except nats.js.errors.NotFoundError:
            current = None
        if current is not None:
            self.settings = adopt_stream(self.settings, current)
        self.schedules = await self._setup_timers()
        await ensure_stream(self.js, stream_config(self.name, self.namespace, self.settings),
                            current)
        advisories = advisory_config(self.advisory, self.name, self.settings)
        try:
            current = (await self.js.stream_info(self.advisory)).config
        except nats.js.errors.NotFoundError:
            current = None
            self.advisory = await drop_legacy_advisories(self.js, self.name, advisories)
            if self.advisory != advisories.name:
                return
        await ensure_stream(self.js, advisories, current)

    async def _setup_timers(self) -> bool:
        """Create or update the timer stream; False when the server cannot schedule."""
        config = timer_config(self.namespace, self.settings)
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

    async def heal(self, stream: str | None = None) -> bool:
        """Re-create the namespace's streams if ``stream`` (default: the work stream) is
        gone, with a warning; True if it exists now."""
        async with self._healing:
            try:
                await self.js.stream_info(stream or self.name)
                return True
            except nats.js.errors.NotFoundError:
                pass
            except (nats.errors.Error, OSError):
                return False
            log.warning("stream was deleted: re-creating it (its messages are gone; work "
                        "published from now on is kept)", stream=stream or self.name)
            try:
                await self.setup()
            except (nats.errors.Error, OSError) as e:
                log.error("could not re-create the stream", stream=self.name, error=repr(e))
                return False
            return True

    async def full(self) -> bool:
        """Whether the work stream is at its own ``max_bytes`` (the next message of the
        largest size would be refused). False when it has no such cap."""
        held, cap = await stream_bytes(self.js, self.name)
        return bool(cap) and held + self.settings.max_msg_bytes > cap

    async def get(self, seq: int, *, stream: str | None = None) -> StoredMessage | None:
        """The message at stream sequence ``seq``, or None."""
        return await read_one(self.js, stream or self.name, seq=seq)

    async def last(self, workflow_id: str, topic: str) -> StoredMessage | None:
        """The newest message of one workflow on one topic, or None."""
        return await read_one(self.js, self.name,
                              subject=subject(self.namespace, workflow_id, topic))

    async def first(self, workflow_id: str, topic: str) -> StoredMessage | None:
        """The oldest message of one workflow on one topic, or None: asked of any replica
        first (a direct get; a replica applies the stream in order, so what it returns
        is the oldest), of the leader when it has none (none, or not yet)."""
        subj = subject(self.namespace, workflow_id, topic)
        if self._direct_gets:
            try:
                found = await read_one(self.js, self.name, seq=1, next=True, subject=subj,
                                       direct=True)
            except nats.errors.NoRespondersError:
                self._direct_gets = False  # a stream made without allow_direct
            else:
                if found is not None:
                    return found
        return await read_one(self.js, self.name, seq=1, next=True, subject=subj)

    async def on_topic(self, topic: str, *, after_seq: int = 0) -> list[StoredMessage]:
        """Every workflow's stored messages on ``topic``, oldest first."""
        return await read_all(self.js, self.name, topic_filter(self.namespace, topic),
                              after_seq=after_seq)

    async def history(self, workflow_id: str, *, after_seq: int = 0) -> list[StoredMessage]:
        """Every stored message of one workflow, oldest first."""
        return await read_all(self.js, self.name, workflow_filter(self.namespace, workflow_id),
                              after_seq=after_seq)
