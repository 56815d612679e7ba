"""Typed settings of the namespace's stream and of a durable consumer, and how they
map onto JetStream's configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from nats.js import api
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SERVER_SIDE",
    "ConsumerSettings",
    "ConsumerStart",
    "EnsuredConsumer",
    "StreamSettings",
    "ack_floor",
    "adopt_stream",
    "consumer_config",
]


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
    max_bytes: int = Field(
        0, ge=0, description="Cap on the stream's size in bytes (0: none). A full stream "
        "refuses new messages (agents hold their outputs until space returns); it never "
        "drops queued work.")


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
    max_body_bytes: int | None = Field(
        None, gt=0, description="Larger bodies are dead-lettered; None: the stream's "
        "max_msg_bytes, the one limit its publishers have too.")

    def retry_delay(self, delivered: int) -> float:
        """Seconds to wait before redelivering a message delivered ``delivered`` times:
        ``retry_delay_s`` doubling per delivery, at most ``max_retry_delay_s``."""
        base = self.retry_delay_s * math.pow(2, max(0, delivered - 1))
        return min(base, self.max_retry_delay_s)


ConsumerStart = Literal["new", "all", "pending"]
"""Where a new durable consumer starts (see ``Bus.ensure_consumer``)."""

SERVER_SIDE = ("ack_wait_s", "max_deliver", "max_ack_pending")


@dataclass(frozen=True, slots=True)
class EnsuredConsumer:
    """The consumer as it is now: ``settings`` in force (the existing consumer's
    server-side values win, see ``Bus.ensure_consumer``); ``created`` when this
    call made it. A consumer created at ``"pending"`` has read the stream up to
    ``replay_until``: of those messages it is to handle only ``pending`` (stream
    sequences); the others were answered already. ``ack_floor``: the stream
    sequence below which everything is acknowledged (0 when unknown)."""

    settings: ConsumerSettings
    created: bool = False
    replay_until: int = 0
    pending: frozenset[int] | None = None
    ack_floor: int = 0


def consumer_config(
    durable: str, filters: list[str], s: ConsumerSettings, replicas: int
) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        deliver_policy=api.DeliverPolicy.NEW,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=s.ack_wait_s,
        max_deliver=s.max_deliver,
        max_ack_pending=s.max_ack_pending,
        filter_subjects=filters if len(filters) > 1 else None,
        filter_subject=filters[0] if len(filters) == 1 else None,
        num_replicas=replicas,
    )


def ack_floor(info: api.ConsumerInfo) -> int:
    floor = info.ack_floor
    return int(floor.stream_seq or 0) if floor is not None else 0


def adopt_stream(settings: StreamSettings, current: api.StreamConfig) -> StreamSettings:
    """``settings`` with every field it leaves unset taken from the existing stream."""
    existing = {
        "replicas": current.num_replicas or 1,
        "max_age_s": current.max_age or 0.0,
        "max_msg_bytes": current.max_msg_size if (current.max_msg_size or 0) > 0 else None,
        "duplicate_window_s": current.duplicate_window or None,
        "storage": "memory" if current.storage == api.StorageType.MEMORY else "file",
        "max_bytes": max(0, current.max_bytes or 0),
    }
    unset = {
        k: v for k, v in existing.items() if k not in settings.model_fields_set and v is not None
    }
    return settings.model_copy(update=unset)


