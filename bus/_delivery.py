"""What a consumer hands to its handlers, and what it counts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from nats.aio.msg import Msg

from swarmbus.protocols import Message

from ._codec import Envelope

__all__ = ["ConsumerStats", "Delivery", "Handler"]


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
