"""What a consumer hands to its handlers, and what it counts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from nats.aio.msg import Msg

from swarmbus.protocols import Message

from ._codec import Envelope

__all__ = ["ConsumerStats", "Delivery", "Handler", "PullStatus"]


class Delivery(NamedTuple):
    """Read off the message's ack subject, without parsing all its metadata.

    ``delivered`` counts deliveries (1 the first time); ``stream_seq`` is the
    message's sequence in the stream; ``timestamp`` when the stream stored it
    (seconds since the epoch, 0.0 when unknown).
    """

    delivered: int
    stream_seq: int
    timestamp: float = 0.0
    replayed: bool = False
    """Delivered by a consumer re-created at the pending work: handled before perhaps
    (its workflow may have ended meanwhile), so check before acting on it."""

    @classmethod
    def of(cls, msg: Msg) -> Delivery:
        # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or the v2 form
        # with <domain>.<account hash> after ACK (and a random token at the end).
        tokens = (msg.reply or "").split(".")
        base = 2 if len(tokens) == 9 else 4
        try:
            return cls(int(tokens[base + 2]), int(tokens[base + 3]), int(tokens[base + 5]) / 1e9)
        except (IndexError, ValueError):
            return cls(1, 0)


class PullStatus(NamedTuple):
    """A status the server sends on a pull subscription instead of a message."""

    heartbeat: bool
    """An idle heartbeat (100): the pull request is alive, nothing to do."""
    pending: int | None
    """Messages of the request the server will not deliver (its Nats-Pending-Messages)."""
    request_ended: bool
    """The request ended (404 no messages, 408 expired, 409 e.g. max ack pending)."""
    consumer_deleted: bool
    """409 "Consumer Deleted": pulling from it gives nothing; re-create it."""

    @classmethod
    def of(cls, msg: Msg) -> PullStatus | None:
        """The status ``msg`` carries; None when it is a stream message. A status has
        no ack subject; a stream message always has one, and may carry a "Status"
        header of its own (a peer's, or a hostile one)."""
        hdrs = msg.headers
        if not hdrs or "Status" not in hdrs or msg.data or (msg.reply or "").startswith(
                "$JS.ACK."):
            return None
        status = hdrs.get("Status", "")
        pending = hdrs.get("Nats-Pending-Messages")
        return cls(
            heartbeat=status == "100",
            pending=int(pending) if pending is not None and pending.isdigit() else None,
            request_ended=status in ("404", "408", "409"),
            consumer_deleted=status == "409" and "deleted" in hdrs.get("Description", "").lower(),
        )


Handler = Callable[[Envelope[Message], Delivery], Awaitable[None]]
"""Handles one decoded message; returning acks it, ``Reject`` dead-letters it,
``Retry`` or any other exception naks it with a delay."""


@dataclass(slots=True)
class ConsumerStats:
    """Counts of one replica's consumer (observable, all bounded by settings)."""

    in_flight: int = 0
    peak_in_flight: int = 0
    handled: int = 0
    retried: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    resubscribed: int = 0
    skipped: int = 0
    """Replayed messages acked unhandled: answered before the consumer was re-created."""
    recreated: int = 0
    """Times the durable consumer was found missing and made again."""
