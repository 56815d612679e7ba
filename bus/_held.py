"""The messages a consumer replica holds: delivered to it, not settled yet."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import anyio
import nats.errors
from nats.aio.msg import Msg

from ._delivery import ConsumerStats, Delivery

__all__ = ["Held"]

_MAX_TOUCH_EVERY_S = 5.0


class Held:
    """Held messages, with when each was last touched (delivered, or its ack wait
    renewed with an in-progress ack). Keeps ``stats.in_flight`` and
    ``stats.peak_in_flight`` current. ``len(held)`` is how many are held."""

    def __init__(self, stats: ConsumerStats) -> None:
        self._msgs: dict[int, tuple[Msg, float]] = {}
        self._stats = stats
        self._idle = anyio.Event()
        self._idle.set()
        self._settled_one: anyio.Event | None = None  # made only when someone waits for it

    def __len__(self) -> int:
        return len(self._msgs)

    def add(self, msg: Msg) -> None:
        self._msgs[id(msg)] = (msg, time.monotonic())
        n = self._stats.in_flight = len(self._msgs)
        if n > self._stats.peak_in_flight:
            self._stats.peak_in_flight = n
        if self._idle.is_set():
            self._idle = anyio.Event()

    def settled(self, msg: Msg) -> None:
        """``msg`` was acked, nak'ed or terminated (or never taken)."""
        self._msgs.pop(id(msg), None)
        if self._settled_one is not None:
            self._settled_one.set()
            self._settled_one = None
        self._stats.in_flight = len(self._msgs)
        if not self._msgs:
            self._idle.set()

    async def idle(self) -> None:
        """Return once nothing is held."""
        await self._idle.wait()

    async def until_settled(self, stream_seq: int, *, besides: Msg) -> None:
        """Return once no message but ``besides`` holds stream sequence ``stream_seq``
        (an old consumer's delivery of it, which decides its outcome)."""
        while any(Delivery.of(m).stream_seq == stream_seq for m, _ in self._msgs.values()
                  if m is not besides):
            if self._settled_one is None:
                self._settled_one = anyio.Event()
            await self._settled_one.wait()

    async def nak_all(self) -> None:
        """Give every held message back now (redelivered at once, not after its ack wait)."""
        for msg, _ in list(self._msgs.values()):
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.nak()

    async def keep_alive(self, ack_wait_s: Callable[[], float]) -> None:
        """Forever: renew the ack wait of every message held for a third of it (the
        ack wait in force, which may change), with an in-progress ack."""
        while True:
            period = ack_wait_s() / 3
            await anyio.sleep(min(period, _MAX_TOUCH_EVERY_S))
            now = time.monotonic()
            for key, (msg, touched) in list(self._msgs.items()):
                if touched < now - period and key in self._msgs:
                    self._msgs[key] = (msg, now)
                    with contextlib.suppress(nats.errors.Error, OSError):
                        await msg.in_progress()
