"""Reading the stream back: one message by sequence or subject, a workflow's history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext

from swarmbus.protocols import Message

from ._codec import DecodeError, Envelope, decode

__all__ = ["StoredMessage", "read_all", "read_one"]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from the stream (for trails and late readers). ``time``:
    when the stream stored it (ISO 8601, UTC), if the server said."""

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


async def read_one(
    js: JetStreamContext, stream: str, *, seq: int | None = None, subject: str | None = None,
    next: bool = False, direct: bool = False,
) -> StoredMessage | None:
    """The message at ``seq``, the last one on ``subject``, or with ``next`` the first
    on ``subject`` from ``seq`` on; None when there is none.

    ``direct`` asks any replica (JetStream's direct get, ``allow_direct`` streams:
    no JSON or base64 to decode), which may lag behind the leader: what it returns
    exists, but None from it may only mean "not here yet". Raises
    ``nats.errors.NoRespondersError`` when the stream does not allow direct gets."""
    try:
        raw = await js.get_msg(stream, seq=seq, subject=subject, next=next, direct=direct)
    except nats.js.errors.NotFoundError:
        return None
    return _stored(raw)


async def read_all(
    js: JetStreamContext, stream: str, subject_filter: str, *, after_seq: int = 0
) -> list[StoredMessage]:
    """Every message on ``subject_filter`` after ``after_seq``, oldest first."""
    out: list[StoredMessage] = []
    seq = after_seq + 1
    while True:
        msg = await read_one(js, stream, seq=seq, subject=subject_filter, next=True)
        if msg is None:
            return out
        out.append(msg)
        seq = msg.seq + 1


_DIRECT_GET_HEADERS = frozenset(
    {"Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Last-Sequence",
     "Nats-Num-Pending", "Nats-UpTo-Sequence"})
"""Headers a direct get adds to the message's own."""


def _stored(raw: Any) -> StoredMessage:
    hdrs = {str(k): str(v) for k, v in (raw.headers or {}).items()
            if k not in _DIRECT_GET_HEADERS}
    stamp = getattr(raw, "time", None)  # nats-py parses both reads' times into datetimes
    return StoredMessage(
        seq=int(raw.seq), subject=str(raw.subject), data=raw.data or b"", headers=hdrs,
        time=stamp.isoformat() if isinstance(stamp, datetime) else stamp,
    )
