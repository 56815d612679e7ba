"""Dead-lettering: rejected messages, and those JetStream gave up on (max deliveries)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import nats.aio.msg
import structlog

from swarmbus.protocols import (
    DeadLetter,
    DeadLetterReason,
    Meta,
    Subject,
    SubjectError,
    headers,
    topics,
)

from ._control import Reject
from ._metrics import dead_lettered
from ._tracing import on_behalf_of

if TYPE_CHECKING:
    from ._bus import Bus

__all__ = [
    "ADVISORY_DURABLE", "DEADLETTER_TOPIC", "dead_letter", "handle_max_deliveries_advisory",
    "max_deliveries_filter", "reject",
]

log = structlog.get_logger("swarmbus.deadletter")

ADVISORY_DURABLE = "swarmbus_deadletter"
DEADLETTER_TOPIC = topics.DEADLETTER
_MAX_BODY = 16 * 1024
_UNROUTED = "_unrouted"


async def dead_letter(
    bus: Bus,
    original_subject: str,
    body: bytes,
    hdrs: dict[str, str],
    *,
    reason: DeadLetterReason,
    error: str,
    agent: str = "",
    deliveries: int = 0,
    stream_seq: int | None = None,
) -> bool:
    """Publish a ``DeadLetter`` for a message on ``swarm.<ns>.<workflow>.deadletter``;
    returns False when there is nothing to publish (a dead letter that failed itself).

    The id is derived from the stream sequence and the agent type, so replicas
    racing to dead-letter the same message store it once, while each agent type
    that gives up on it (fan-out) leaves its own record. Dead letters are never
    dead-lettered again. Dead-lettering ends nothing: whoever owns the workflow
    (the swarm's supervisor) reads ``deadletter`` and decides.
    """
    try:
        parsed: Subject | None = Subject.parse(original_subject)
    except SubjectError:
        parsed = None
    if (parsed.topic if parsed is not None else original_subject.rsplit(".", 1)[-1]) == (
        DEADLETTER_TOPIC
    ):
        log.error("a dead letter could not be handled; dropped", subject=original_subject)
        return False
    workflow = parsed.workflow_id if parsed and parsed.namespace == bus.namespace else _UNROUTED
    letter = DeadLetter(
        subject=original_subject,
        headers={str(k): str(v)[:1024] for k, v in list(hdrs.items())[:64]},
        body=body[:_MAX_BODY].decode("utf-8", errors="replace"),
        body_size=len(body),
        body_truncated=len(body) > _MAX_BODY,
        error=error[:4000],
        reason=reason,
        agent=agent,
        deliveries=deliveries,
        stream_seq=stream_seq,
    )
    ident = f"dl-{bus.stream_name}-{stream_seq}-{agent}" if stream_seq else None
    msg_id = ident or f"dl-{hdrs.get(headers.MSG_ID, '')}-{agent}"
    with on_behalf_of(hdrs):  # in the message's trace, a child of its sender's span
        sent = await bus.publish(workflow, DEADLETTER_TOPIC, letter, Meta(
            msg_id, causation_id=hdrs.get(headers.MSG_ID), sender=agent or "swarmbus",
            workflow=hdrs.get(headers.WORKFLOW)))
    if not sent.duplicate:  # a replica racing to dead-letter it stored it already
        dead_lettered(original_subject, group=agent, reason=reason)
    return True


async def reject(
    bus: Bus,
    msg: nats.aio.msg.Msg,
    e: Reject,
    *,
    agent: str,
    deliveries: int,
    stream_seq: int,
    publish: bool,
    retry_delay_s: float,
) -> bool:
    """Settle a message its handler rejected: dead-letter it (when ``publish``) and
    terminate it, so JetStream never redelivers it. Returns whether a dead letter
    was published. When publishing it fails, the message is nak'ed instead (after
    ``retry_delay_s`` seconds), to be rejected again."""
    published = False
    if publish:
        try:
            published = await dead_letter(
                bus, msg.subject, msg.data, dict(msg.headers or {}), reason=e.reason,
                error=e.detail, agent=agent, deliveries=deliveries,
                stream_seq=stream_seq or None,
            )
        except Exception as err:  # dead-letter publish failed: try again later
            log.warning("dead-letter failed, retrying later", error=repr(err))
            await msg.nak(delay=retry_delay_s)
            return False
    log.warning("message dead-lettered" if published else "message dropped",
                consumer=agent, reason=e.reason, detail=e.detail[:300], subject=msg.subject)
    await msg.term()
    return published


async def handle_max_deliveries_advisory(bus: Bus, msg: nats.aio.msg.Msg) -> None:
    """Dead-letter the stream message a MAX_DELIVERIES advisory points at."""
    try:
        advisory = json.loads(msg.data)
        seq = int(advisory["stream_seq"])
        consumer = str(advisory.get("consumer", ""))
        deliveries = int(advisory.get("deliveries", 0))
    except (ValueError, KeyError, TypeError) as e:
        raise Reject(f"malformed advisory: {e!r}") from None
    stored = await bus.get(seq)
    if stored is None:
        log.warning("max-deliveries message already gone from the stream", seq=seq)
        return
    await dead_letter(
        bus, stored.subject, stored.data, stored.headers, reason="max_deliveries",
        error=f"not acknowledged after {deliveries} deliveries to {consumer}",
        agent=consumer, deliveries=deliveries, stream_seq=seq,
    )
    log.warning("message dead-lettered after max deliveries", seq=seq, consumer=consumer)


def max_deliveries_filter(bus: Bus) -> str:
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{bus.stream_name}.*"
