"""The namespace's streams: their configurations, and creating or updating them."""

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
    namespace_filter,
    timer_filter,
    timer_stream_name,
    topic_filter,
    topics,
)

from ._settings import StreamSettings
from ._store import NO_PLACEMENT, storage_problem

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
