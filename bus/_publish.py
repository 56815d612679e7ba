"""A JetStream publish and what its refusals mean: a subject already taken, a message too
large, a store that cannot take it, a stream not there (yet)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from swarmbus.protocols import ExternalError, Message, Meta, SwarmbusError, subject, timer_subject

from ._codec import encode
from ._secrets import scrub_bytes, scrub_headers
from ._store import (
    MESSAGE_TOO_LARGE,
    STORE_FAILED,
    SUBJECT_BUSY,
    WRONG_LAST_SEQUENCE,
    StoreGate,
    StoreUnavailableError,
    storage_problem,
    store_error,
)
from ._tracing import inject_trace, send_span

if TYPE_CHECKING:
    from ._streams import Streams

__all__ = [
    "EXPECT_FIRST",
    "SCHEDULE",
    "SCHEDULE_TARGET",
    "PayloadTooLargeError",
    "PublishResult",
    "Publisher",
    "SubjectTakenError",
    "check_size",
    "publish_once",
]

EXPECT_FIRST = "Nats-Expected-Last-Subject-Sequence"
"""The JetStream header a ``first=True`` publish sets to ``0``; the stored message keeps it."""

NOT_READY_S = 3.0
"""How long a publish waits for a stream that exists but takes no messages yet (seconds)."""


class PayloadTooLargeError(SwarmbusError, ValueError):
    """A message larger than the server or the stream accepts."""


class SubjectTakenError(SwarmbusError):
    """A publish with ``first=True`` found a message already on its subject
    (``last_seq``): the server refused the second one."""

    def __init__(self, subject: str, last_seq: int) -> None:
        super().__init__(f"{subject} already holds a message (stream sequence {last_seq})")
        self.subject = subject
        self.last_seq = last_seq


@dataclass(frozen=True, slots=True)
class PublishResult:
    seq: int
    duplicate: bool


def check_size(subj: str, body: bytes, headers: dict[str, str] | None, limit: int) -> None:
    """Raise ``PayloadTooLargeError`` if ``body`` and ``headers`` as sent (bytes, with
    the protocol's framing) exceed ``limit`` bytes: the server would close the
    connection for it (nats-py's own check leaves headers out)."""
    size = len(body) + sum(len(k) + len(v) + 4 for k, v in (headers or {}).items()) + 12
    if size > limit:
        raise PayloadTooLargeError(
            f"message of {size} bytes (body and headers) for {subj} exceeds the limit of "
            f"{limit} bytes (server max_payload / stream.max_msg_bytes)"
        )


async def publish_once(
    js: JetStreamContext, subj: str, body: bytes, headers: dict[str, str] | None, *,
    stream: str, heal: Callable[[], Awaitable[bool]],
) -> PublishResult:
    """Publish through JetStream and await the stream's ack (10 s). A subject no stream
    takes has ``heal`` called once (it re-creates a deleted ``stream``; True: it exists
    now), then is waited for up to ``NOT_READY_S``. Raises ``SubjectTakenError``,
    ``PayloadTooLargeError``, ``StoreUnavailableError`` (no stream, or a store that
    cannot take it now), ``ExternalError`` when no ack comes; other JetStream errors
    as nats-py raises them."""
    busy = 0
    healed = False
    waited, pause = 0.0, 0.05
    while True:
        try:
            ack = await js.publish(subj, body, headers=headers, timeout=10.0)
        except nats.js.errors.NoStreamResponseError as e:
            # No stream takes the subject: deleted (re-create it once), or not up yet.
            if not healed and await heal():
                healed = True
                continue
            if healed and waited < NOT_READY_S:
                # It exists: in a cluster, the server we talk to may not know yet that
                # the stream (made on another node a moment ago) takes the subject.
                await anyio.sleep(pause)
                waited, pause = waited + pause, min(pause * 2, 0.5)
                continue
            raise StoreUnavailableError(
                f"no stream takes {subj} (stream {stream} missing or not "
                "ready); it is re-created when possible", stream=stream,
                reason="unavailable") from e
        except nats.errors.TimeoutError as e:
            raise ExternalError(f"JetStream did not confirm publish to {subj}: {e!r}") from e
        except nats.js.errors.APIError as e:
            code = e.err_code
            if code == WRONG_LAST_SEQUENCE:
                last = (e.description or "").rsplit(":", 1)[-1].strip()
                raise SubjectTakenError(subj, int(last) if last.isdigit() else 0) from None
            if code in SUBJECT_BUSY and busy < 40:
                # Another publish expecting this subject's last sequence is in flight:
                # its outcome decides ours (taken, or ours goes in).
                busy += 1
                await anyio.sleep(min(0.01 * 2**busy, 0.25))
                continue
            if code == MESSAGE_TOO_LARGE or (
                code == STORE_FAILED and "size" in (e.description or "").lower()
            ):
                raise PayloadTooLargeError(f"{subj}: {e.description}") from None
            if storage_problem(e) is not None:
                raise await store_error(js, stream, e) from None
            raise
        return PublishResult(seq=ack.seq, duplicate=bool(ack.duplicate))


SCHEDULE = "Nats-Schedule"
SCHEDULE_TARGET = "Nats-Schedule-Target"


class Publisher:
    """The one way out to the namespace's streams: every message goes through
    ``publish_raw``, which adds the current trace context (``traceparent``), scrubs
    registered secrets, checks the size against the one
    limit (the stream's ``max_msg_bytes``, or the server's ``max_payload`` when
    smaller), lets JetStream de-duplicate by ``Nats-Msg-Id``, and holds what a full
    store cannot take (``gate``)."""

    def __init__(self, nc: NATS, js: JetStreamContext, streams: Streams) -> None:
        self.nc = nc
        self.js = js
        self.streams = streams
        self.gate = StoreGate()
        """Holds publishes the store cannot take now (see ``hold_publishes``)."""

    @property
    def limit(self) -> int:
        """The largest message (body and headers, bytes) any publisher may send."""
        limit = self.streams.settings.max_msg_bytes
        return min(limit, self.nc.max_payload) if self.nc.max_payload else limit

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
        """``Bus.publish`` (which documents it)."""
        body, hdrs = encode(message, meta)
        subj = subject(self.streams.namespace, workflow_id, topic)
        if headers:
            hdrs.update(headers)
        if first or expect_last_seq is not None:
            hdrs[EXPECT_FIRST] = str(expect_last_seq or 0)
        with send_span(subj, meta.msg_id, hdrs):  # a handler's output: its PRODUCER span
            return await self.publish_raw(subj, body, hdrs)

    async def schedule(
        self, workflow_id: str, topic: str, message: Message, meta: Meta, *, at: datetime,
        target: str, confirm: bool = True,
    ) -> PublishResult | None:
        """``Bus.schedule`` (which documents it)."""
        if not self.streams.schedules:
            return None
        body, hdrs = encode(message, meta)
        ns = self.streams.namespace
        hdrs[SCHEDULE] = "@at " + at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        hdrs[SCHEDULE_TARGET] = timer_subject(ns, workflow_id, target)
        subj = timer_subject(ns, workflow_id, topic)
        if confirm:
            return await self.publish_raw(subj, body, hdrs)
        inject_trace(hdrs)
        body, hdrs = scrub_bytes(body), scrub_headers(hdrs)
        check_size(subj, body, hdrs, self.limit)
        await self.nc.publish(subj, body, headers=hdrs)  # stored by the stream, not awaited
        return None

    async def publish_raw(
        self, subj: str, body: bytes, headers: dict[str, str] | None = None
    ) -> PublishResult:
        """``Bus.publish_raw`` (which documents it)."""
        body = scrub_bytes(body)
        headers = dict(headers or {})
        inject_trace(headers)  # the sender's trace context (W3C), unless it has one already
        headers = scrub_headers(headers) if headers else None
        check_size(subj, body, headers, self.limit)
        return await self.gate.run(lambda: publish_once(
            self.js, subj, body, headers, stream=self.streams.name, heal=self.streams.heal))
