"""Durable consumers: made where the work is, adopted when they exist.

A consumer that exists keeps its server-side settings unless told to update them
(two daemons configured differently must not rewrite each other's ack wait).

Where a re-created consumer resumes: the work of its topics nobody answered yet.

JetStream forgets a deleted consumer's place. Starting the new one at "now" skips
what waits; starting at the oldest message redoes every step ever answered (and
pays again once the duplicate window and the response cache have passed). The
stream itself says what was answered: an agent's output carries its
``Swarm-Sender`` and, as ``Swarm-Causation-Id``, the ``Nats-Msg-Id`` of the
message it answered. One pass over the headers finds the messages on the
consumer's filters without such an answer, in workflows with nothing on an end
topic (their result).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors
import nats.js.errors
import structlog
from nats.js import api

from swarmbus.protocols import Subject, SubjectError, headers, namespace_filter, topic_filter

from ._settings import (
    SERVER_SIDE,
    ConsumerSettings,
    ConsumerStart,
    EnsuredConsumer,
    ack_floor,
    consumer_config,
)
from ._store import STREAM_NOT_FOUND

if TYPE_CHECKING:
    from ._streams import Streams

__all__ = [
    "Consumers", "Drift", "answered", "consumer_drift", "ensure_durable", "pending_messages",
    "subject_matches",
]

log = structlog.get_logger("swarmbus.bus")

_SCAN_IDLE_S = 5.0


def subject_matches(subject: str, pattern: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` the rest."""
    subj, pat = subject.split("."), pattern.split(".")
    for i, p in enumerate(pat):
        if p == ">":
            return len(subj) > i
        if i >= len(subj) or (p != "*" and p != subj[i]):
            return False
    return len(subj) == len(pat)


def _workflow(subject: str) -> str:
    try:
        return Subject.parse(subject).workflow_id
    except SubjectError:
        return ""


async def pending_messages(
    streams: Streams, stream: str, filters: list[str], sender: str, *, after_seq: int = 0,
    end_topics: tuple[str, ...] = (),
) -> tuple[int, int, set[int]]:
    """Scan ``stream``'s headers after ``after_seq``: returns (the sequence to start
    at, the last sequence scanned, the sequences on ``filters`` still to answer).

    The start is the oldest pending message, or the one after the last when none
    is. Reads headers only, once; bounded by the stream's length at the call.
    Raises ``nats.errors.Error`` when the stream cannot be read.
    """
    info = await streams.js.stream_info(stream)
    last, first = int(info.state.last_seq or 0), int(info.state.first_seq or 0)
    if after_seq > last:  # a stream made anew since: read it all
        after_seq = 0
    begin = max(first, after_seq + 1, 1)
    if last < begin:
        return last + 1, last, set()
    waiting: dict[str, tuple[int, str]] = {}  # msg id -> (seq, workflow)
    ended: set[str] = set()
    config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=begin, headers_only=True)
    sub = await streams.js.subscribe(namespace_filter(streams.namespace), stream=stream,
                                 ordered_consumer=True, config=config)
    try:
        while True:
            msg = None
            with anyio.move_on_after(_SCAN_IDLE_S):
                msg = await sub.next_msg(timeout=None)
            if msg is None:  # the last messages went (age limit) while we read
                break
            seq = msg.metadata.sequence.stream
            hdrs = msg.headers or {}
            if any(subject_matches(msg.subject, f) for f in filters):
                msg_id = hdrs.get(headers.MSG_ID) or f"{stream}-{seq}"
                waiting[msg_id] = (seq, _workflow(msg.subject))
            if hdrs.get(headers.SENDER) == sender:
                waiting.pop(hdrs.get(headers.CAUSATION_ID, ""), None)
            if end_topics and msg.subject.rsplit(".", 1)[-1] in end_topics:
                try:
                    parsed = Subject.parse(msg.subject)
                except SubjectError:
                    parsed = None
                if parsed is not None and parsed.topic in end_topics:
                    ended.add(parsed.workflow_id)
            if seq >= last:
                break
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    pending = {seq for seq, wf in waiting.values() if wf not in ended}
    return (min(pending) if pending else last + 1), last, pending


@dataclass(frozen=True, slots=True)
class Drift:
    """What the server says of a consumer now: its ack floor (stream sequence) and
    the settings that differ from the ones this process holds."""

    ack_floor: int
    changed: dict[str, Any]


async def consumer_drift(
    streams: Streams, stream: str, durable: str, settings: ConsumerSettings
) -> Drift | None:
    """The consumer's ack floor and changed settings (ack wait, max deliveries, max
    ack pending); None when it no longer exists."""
    try:
        info = await streams.js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return None
    cur = info.config
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    changed: dict[str, Any] = {}
    for key, value in (("ack_wait_s", cur.ack_wait), ("max_deliver", cur.max_deliver),
                       ("max_ack_pending", cur.max_ack_pending)):
        if value is not None and value != getattr(settings, key):
            changed[key] = value
    return Drift(int(floor or 0), changed)


async def answered(streams: Streams, subject: str, msg_id: str, sender: str, seq: int) -> bool:
    """Whether ``sender`` has published a message caused by ``msg_id`` (stored after
    ``seq``, in the same workflow): the message was handled already."""
    wf = _workflow(subject)
    if not wf:
        return False
    for stored in await streams.history(wf, after_seq=seq):
        h = stored.headers
        if h.get(headers.SENDER) == sender and h.get(headers.CAUSATION_ID) == msg_id:
            return True
    return False


async def ensure_durable(
    streams: Streams,
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
    """``Bus.ensure_consumer`` (which documents it)."""
    own = settings or ConsumerSettings()
    want = filters or sorted(topic_filter(streams.namespace, t) for t in topics)
    stream = stream or streams.name
    try:
        info = await streams.js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError as e:
        if e.err_code == STREAM_NOT_FOUND and stream in (
            streams.name, streams.advisory
        ):
            await streams.heal(stream)
        info = None
    if info is None:
        pending: frozenset[int] | None = None
        until = 0
        config = consumer_config(durable, want, own, streams.settings.replicas)
        if start == "all":
            config.deliver_policy = api.DeliverPolicy.ALL
        elif start == "pending":
            first, until, found = await pending_messages(
                streams, stream, want, sender or durable, after_seq=after_seq,
                end_topics=end_topics)
            pending = frozenset(found)
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = first
        try:
            await streams.js.add_consumer(stream, config)
        except nats.js.errors.BadRequestError as refused:
            try:  # created concurrently (with another start): adopt that one
                await streams.js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                raise refused from None  # the config itself was refused
            return await ensure_durable(
                streams, durable, topics, settings, stream=stream, filters=filters, update=update,
                sender=sender)
        log.info("durable consumer created", consumer=durable, stream=stream, start=start,
                 from_seq=config.opt_start_seq, pending=len(pending or ()))
        return EnsuredConsumer(own, created=True, replay_until=until, pending=pending)
    cur = info.config
    have = sorted(cur.filter_subjects or ([cur.filter_subject] if cur.filter_subject else []))
    theirs = own.model_copy(update={
        "ack_wait_s": cur.ack_wait if cur.ack_wait is not None else own.ack_wait_s,
        "max_deliver": cur.max_deliver if cur.max_deliver is not None else own.max_deliver,
        "max_ack_pending": cur.max_ack_pending or own.max_ack_pending,
    })
    differ = {k: (getattr(theirs, k), getattr(own, k)) for k in SERVER_SIDE
              if getattr(theirs, k) != getattr(own, k)}
    effective = own if update else theirs
    if differ and not update:
        log.warning(
            "consumer settings differ from this process's: using the existing consumer's",
            consumer=durable, differ={k: {"consumer": a, "configured": b}
                                      for k, (a, b) in differ.items()},
            fix=f"configure {', '.join(f'{k}={a}' for k, (a, _) in differ.items())} for "
                f"{durable} to match, or start with --update-consumers to apply "
                f"{', '.join(f'{k}={b}' for k, (_, b) in differ.items())}")
    elif differ:
        log.warning("updating the consumer's settings (--update-consumers)",
                    consumer=durable, changes={k: {"from": a, "to": b}
                                               for k, (a, b) in differ.items()})
    if have != want:
        log.warning("consumer filters follow this process's topics", consumer=durable,
                    had=have, now=want)
    if (differ and update) or have != want or (cur.num_replicas or 0) < streams.settings.replicas:
        config = consumer_config(durable, want, effective, streams.settings.replicas)
        config.deliver_policy = cur.deliver_policy
        config.opt_start_seq = cur.opt_start_seq
        config.opt_start_time = cur.opt_start_time
        await streams.js.add_consumer(stream, config)
    return EnsuredConsumer(effective, created=False, ack_floor=ack_floor(info))


class Consumers:
    """The namespace's durable consumers: made or adopted with the settings in force
    (``ensure``), watched for what changed on the server (``drift``), and what a
    re-created one must not redo (``answered``)."""

    def __init__(self, streams: Streams) -> None:
        self.streams = streams

    async def ensure(self, durable: str, topics: list[str],
                     settings: ConsumerSettings | None = None, **options: Any) -> EnsuredConsumer:
        """``Bus.ensure_consumer`` (which documents it)."""
        return await ensure_durable(self.streams, durable, topics, settings, **options)

    async def drift(self, stream: str, durable: str, settings: ConsumerSettings) -> Drift | None:
        """``consumer_drift`` on this namespace's streams."""
        return await consumer_drift(self.streams, stream, durable, settings)

    async def answered(self, subject: str, msg_id: str, sender: str, seq: int) -> bool:
        """``answered`` on this namespace's work stream."""
        return await answered(self.streams, subject, msg_id, sender, seq)
