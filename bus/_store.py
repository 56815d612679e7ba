"""When JetStream cannot store: which server errors mean "not now", and the gate that
holds a consumer's outputs until the store takes them again.

A publish refused for lack of storage (or because the stream is offline or gone) is
not the message's fault. Failing the handler would nak the message, JetStream would
count a delivery, and the redelivery would pay its model again (the response cache
cannot store either). So inside a consumer's workers (``hold_publishes``) the
publish waits instead: the delivery stays in flight (in-progress acks), the answer
already paid for stays in memory, and the consumer pulls nothing new while any
publish is held (``StoreGate.stalled``). The first publish that goes through again
opens the gate for all.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import anyio
import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext

from swarmbus.protocols import ExternalError

__all__ = [
    "MESSAGE_TOO_LARGE",
    "NO_PLACEMENT",
    "STREAM_NOT_FOUND",
    "SUBJECT_BUSY",
    "WRONG_LAST_SEQUENCE",
    "StoreGate",
    "StoreUnavailableError",
    "hold_publishes",
    "storage_problem",
    "store_error",
    "stream_bytes",
]

T = TypeVar("T")
log = structlog.get_logger("swarmbus.bus")

# JetStream error codes (nats-server's errors.json).
WRONG_LAST_SEQUENCE = 10071
SUBJECT_BUSY = frozenset({
    10164,  # wrong last sequence, no number: another expecting publish on the subject in flight
    10163,  # expected last sequence per subject temporarily unavailable
})
NO_STORAGE = frozenset({
    10023,  # insufficient resources: the server's max_file_store / max_memory_store reached
    10002,  # resource limits exceeded for account
    10047,  # insufficient storage resources available
    10028,  # insufficient memory resources available
})
STORE_FAILED = 10077  # the stream's own limits (max_bytes, max_msgs with discard new), or IO
OFFLINE = frozenset({10008, 10118, 10194})  # cluster unavailable, stream offline
MESSAGE_TOO_LARGE = 10054
NO_PLACEMENT = 10005  # no suitable peers for placement: a peer not seen online yet
STREAM_NOT_FOUND = 10059


class StoreUnavailableError(ExternalError):
    """JetStream cannot store a message now: out of storage (``reason="full"``), or the
    stream is offline or gone (``"unavailable"``). Not the message's fault: publish it
    again later. ``str()`` says what to do (free space, raise a limit)."""

    def __init__(self, message: str, *, stream: str, reason: Literal["full", "unavailable"],
                 code: int | None = None) -> None:
        super().__init__(message)
        self.stream = stream
        self.reason: Literal["full", "unavailable"] = reason
        self.code = code

    @property
    def status(self) -> str:
        """``storage full`` or ``stream unavailable`` (what ``status`` shows)."""
        return "storage full" if self.reason == "full" else "stream unavailable"


def storage_problem(e: nats.js.errors.APIError) -> Literal["full", "unavailable"] | None:
    """What a JetStream error says of the store: ``full``, ``unavailable``, or None
    when it is about the message itself."""
    code = e.err_code
    if code in NO_STORAGE or (code == STORE_FAILED and "size" not in (e.description or "")):
        return "full"
    if code in OFFLINE or (isinstance(e, nats.js.errors.ServiceUnavailableError)
                           and code not in SUBJECT_BUSY):
        return "unavailable"
    return None


_holding: contextvars.ContextVar[bool] = contextvars.ContextVar("swarmbus_hold", default=False)


def hold_publishes() -> None:
    """In the calling task (and tasks it starts), a publish the store cannot take now
    waits until it can instead of raising ``StoreUnavailableError`` (what a consumer's
    workers do: the delivery is held, so an answer already paid for is not lost)."""
    _holding.set(True)


class StoreGate:
    """Whether the store takes this connection's messages; holds those it does not.

    ``stalled`` is the error that holds publishes now (None: none held). It is
    logged once when the stall starts (with what to do), every 30 s while it lasts,
    and once when it ends.
    """

    remind_every_s = 30.0

    def __init__(self) -> None:
        self.stalled: StoreUnavailableError | None = None
        self._held = 0
        self._open = anyio.Event()
        self._open.set()
        self._since = 0.0
        self._reminded = 0.0

    @property
    def held(self) -> int:
        """Operations waiting for the store right now."""
        return self._held

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``; when it raises ``StoreUnavailableError`` in a holding task,
        wait (0.2 s doubling to 5 s, or until another gets through) and again."""
        held = False
        backoff = 0.2
        try:
            while True:
                try:
                    result = await attempt()
                except StoreUnavailableError as e:
                    if not _holding.get():
                        raise
                    if not held:
                        held = True
                        self._hold(e)
                    self._remind(e)
                    with anyio.move_on_after(backoff):
                        await self._open.wait()
                    backoff = min(backoff * 2, 5.0)
                    continue
                self.reopen()
                return result
        finally:
            if held:
                self._held -= 1
                if self._held == 0 and self.stalled is not None:
                    self.reopen(quiet=True)  # nobody left to retry: let the next one probe

    async def available(self) -> None:
        """Return once nothing is held for the store."""
        while self.stalled is not None:
            await self._open.wait()

    def reopen(self, *, quiet: bool = False) -> None:
        """The store took a message: release everything held."""
        if self.stalled is None:
            return
        if not quiet:
            log.warning("the store takes messages again: publishing held outputs",
                        stream=self.stalled.stream, held=self._held,
                        stalled_for_s=round(time.monotonic() - self._since, 1))
        self.stalled = None
        self._open.set()

    def _hold(self, e: StoreUnavailableError) -> None:
        self._held += 1
        if self.stalled is None:
            self.stalled = e
            self._since = self._reminded = time.monotonic()
            self._open = anyio.Event()
            log.error(str(e), stream=e.stream, code=e.code,
                      what="holding outputs already paid for; pulling no new work")

    def _remind(self, e: StoreUnavailableError) -> None:
        now = time.monotonic()
        if now - self._reminded >= self.remind_every_s:
            self._reminded = now
            log.error(str(e), stream=e.stream, code=e.code, held=self._held,
                      stalled_for_s=round(now - self._since))


async def store_error(
    js: JetStreamContext, stream: str, e: nats.js.errors.APIError
) -> StoreUnavailableError:
    """The server's refusal of a publish to ``stream`` as an operator can act on it:
    which store is full, how full, and what to free or raise."""
    code = e.err_code
    detail = e.description or f"error {code}"
    if storage_problem(e) != "full":
        return StoreUnavailableError(
            f"stream {stream} is unavailable ({detail}, code {code}); it is retried",
            stream=stream, reason="unavailable", code=code)
    held, cap = await stream_bytes(js, stream)
    if code == STORE_FAILED and cap:
        msg = (f"stream {stream} is full: {_mb(held)} of {_mb(cap)}; free space or raise "
               "max_bytes (stream.max_bytes)")
    else:
        msg = (f"stream {stream} is full: the server has no JetStream storage left "
               f"({detail}; the stream holds {_mb(held)}); free space or raise the "
               "server's max_file_store (jetstream { max_file_store })")
    return StoreUnavailableError(msg, stream=stream, reason="full", code=code)


async def stream_bytes(js: JetStreamContext, stream: str) -> tuple[int, int]:
    """(bytes stored, max_bytes or 0) of ``stream``; (0, 0) if unknown."""
    try:
        info = await js.stream_info(stream)
    except (nats.errors.Error, OSError):
        return 0, 0
    return int(info.state.bytes or 0), max(0, info.config.max_bytes or 0)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
