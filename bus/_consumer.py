"""The supervised pull-consume loop of one agent type (one replica of it).

Pull requests are issued by us (not ``PullSubscription.fetch``, which can hold
a batch open for its whole timeout when fewer messages than asked arrive):
credit is kept at most equal to free handler slots, so every delivered
message starts at once and nothing queues unbounded in this process.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import nats.errors
import nats.js.errors
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from swarmbus.protocols import headers

from ._bus import Bus
from ._codec import decode
from ._control import Reject, Retry
from ._deadletter import reject
from ._delivery import ConsumerStats, Delivery, Handler, PullStatus
from ._held import Held
from ._metrics import DeliveryAttributes, handling, redelivered
from ._settings import ConsumerSettings, ConsumerStart
from ._store import hold_publishes

__all__ = ["ConsumerStats", "Delivery", "Handler", "PullConsumer"]


_RawHandler = Callable[[Msg, Delivery], Awaitable[None]]

log = structlog.get_logger("swarmbus.consumer")

_EXPIRES_S = 10.0
_HEARTBEAT_S = 2.0
_CHECK_S = 5.0


class PullConsumer:
    """Pulls from a durable consumer, decodes each message and runs ``handler`` on it.

    ``settings`` are what this replica wants; an existing consumer's server-side
    settings win unless ``update`` (see ``Bus.ensure_consumer``): ``settings``
    then holds the ones in force. A deleted consumer is re-created, at ``start``
    (``"pending"``: the work of its topics that ``sender``, the agent type whose
    outputs name it as ``Swarm-Sender``, has not answered yet; ``end_topics`` name
    what ends a workflow). While the store cannot take outputs (``Bus.stalled``)
    it pulls nothing and holds what it has, with in-progress acks.
    ``on_settings`` hears the settings in force whenever they change.

    A message that does not decode (bytes, schema, unknown type, oversize) is
    dead-lettered without reaching the handler. Outcome of the handler: return
    -> ack; ``Reject`` -> dead-letter + term; ``Retry`` or any other exception
    -> nak with a delay (``Retry.delay_s``, else doubling per delivery); after
    ``max_deliver`` JetStream's advisory dead-letters it. Long handlers are kept
    alive with in-progress acks.
    """

    def __init__(
        self,
        bus: Bus,
        durable: str,
        handler: Handler | None,
        *,
        topics: list[str] | None = None,
        filters: list[str] | None = None,
        stream: str | None = None,
        settings: ConsumerSettings | None = None,
        dead_letter_on_reject: bool = True,
        start: ConsumerStart = "new",
        end_topics: tuple[str, ...] = (),
        update: bool = False,
        on_settings: Callable[[ConsumerSettings], None] | None = None,
        sender: str | None = None,
        _raw: _RawHandler | None = None,
    ) -> None:
        self.bus = bus
        self.durable = durable
        self.sender = sender or durable

        self.topics = topics or []
        self.filters = filters
        self.stream = stream or bus.stream_name
        self.settings = settings or ConsumerSettings()
        if _raw is not None:
            self._dispatch: _RawHandler = _raw
        elif handler is not None:
            self._dispatch = self._decoding(handler)
        else:
            raise TypeError("PullConsumer needs a handler")
        self.stats = ConsumerStats()
        self._dead_letter_on_reject = dead_letter_on_reject
        self._start: ConsumerStart = start
        self._end_topics = tuple(end_topics)
        self._update = update
        self._on_settings = on_settings
        self._known = False  # the durable existed when we last looked
        self._ack_floor = 0
        self._replay_until = 0
        self._pending: frozenset[int] | None = None
        self._last_check = 0.0
        self._held = Held(self.stats)
        self._send: MemoryObjectSendStream[Msg] | None = None
        self._credit = 0
        self._last_activity = 0.0
        self._want_pull = anyio.Event()
        self._stopping = anyio.Event()
        self._accepting = False
        self._sub: Subscription | None = None
        self._seen_reconnects = 0
        self._consumer_gone = False
        self._meter = DeliveryAttributes(group=durable, agent=self.sender)

    def _decoding(self, handler: Handler) -> _RawHandler:
        fallback = f"{self.bus.stream_name}-"
        # One size limit: what the stream (and so every publisher) takes, unless set lower.
        max_bytes = self.settings.max_body_bytes or self.bus.stream.max_msg_bytes

        async def dispatch(msg: Msg, delivery: Delivery) -> None:
            env = decode(msg.subject, msg.data, msg.headers, max_bytes=max_bytes,
                         fallback_id=f"{fallback}{delivery.stream_seq}")
            await handler(env, delivery)

        return dispatch

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop pulling; in-flight handlers go on (see ``run``'s grace period)."""
        self._stopping.set()
        self._want_pull.set()

    async def run(
        self, *, grace_s: float = 30.0, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until ``stop()``; then let in-flight work finish within ``grace_s``,
        nak what is left, and return. Signals readiness once subscribed."""
        # Delivered messages go to `concurrency` long-lived workers (a task per message
        # cost ~40 us each); credit never exceeds free slots, so sending never blocks.
        send, recv = anyio.create_memory_object_stream[Msg](self.settings.concurrency)
        async with send, recv, anyio.create_task_group() as handlers:
            self._send = send
            handlers.start_soon(self._held.keep_alive, lambda: self.settings.ack_wait_s)
            for _ in range(self.settings.concurrency):
                handlers.start_soon(self._worker, recv)
            self._accepting = True
            try:
                await self._supervise(task_status)
                with anyio.move_on_after(grace_s):
                    await self._held.idle()
            finally:
                self._accepting = False
                if self._held:
                    log.warning("nak in-flight work", consumer=self.durable, n=len(self._held))
                    with anyio.CancelScope(shield=True):
                        await self._held.nak_all()
                handlers.cancel_scope.cancel()

    async def _supervise(self, task_status: TaskStatus[None]) -> None:
        started = False
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await self._ensure()
                await self._subscribe()
                if not started:
                    started = True
                    task_status.started()
                backoff = 0.1
                await self._request_loop()
            except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as e:
                if not self.bus.nc.is_connected or isinstance(e, nats.errors.ConnectionClosedError):
                    log.info("waiting for NATS", consumer=self.durable, error=repr(e))
                else:
                    log.warning("consumer loop error, re-subscribing", consumer=self.durable,
                                error=f"{type(e).__name__}: {e}")  # nats' reprs are bare
                if self.bus.nc.is_closed:
                    raise
                with anyio.move_on_after(backoff):
                    await self._stopping.wait()
                backoff = min(backoff * 2, 2.0)
            finally:
                await self._unsubscribe()
        if not started:
            task_status.started()

    async def _ensure(self) -> None:
        ensured = await self.bus.ensure_consumer(
            self.durable, self.topics, self.settings, stream=self.stream,
            filters=self.filters, start=self._start, after_seq=self._ack_floor,
            end_topics=self._end_topics, update=self._update, sender=self.sender,
        )
        self._follow(ensured.settings)
        self._ack_floor = max(self._ack_floor, ensured.ack_floor)
        self._last_check = time.monotonic()
        if ensured.created:
            if self._known:
                self.stats.recreated += 1
                log.warning(
                    "durable consumer was deleted: re-created it", consumer=self.durable,
                    start=self._start, from_seq=self._ack_floor + 1,
                    pending=len(ensured.pending or ()), read_up_to=ensured.replay_until)
            if ensured.pending is not None:
                self._replay_until, self._pending = ensured.replay_until, ensured.pending
        self._known = True

    async def _check_consumer(self) -> None:
        """Every few seconds: is the consumer still there, with which settings."""
        self._last_check = time.monotonic()
        drift = await self.bus.consumers.drift(self.stream, self.durable, self.settings)
        if drift is None:
            self._consumer_gone = True
            return
        self._ack_floor = max(self._ack_floor, drift.ack_floor)
        if drift.changed:
            log.warning("consumer settings changed on the server: following them",
                        consumer=self.durable, now=drift.changed,
                        before={k: getattr(self.settings, k) for k in drift.changed})
            self._follow(self.settings.model_copy(update=drift.changed))

    def _follow(self, settings: ConsumerSettings) -> None:
        self.settings = settings
        if self._on_settings is not None:
            self._on_settings(settings)

    async def _subscribe(self) -> None:
        inbox = self.bus.nc.new_inbox()
        self._credit = 0
        self._consumer_gone = False
        self._seen_reconnects = self.bus.reconnects
        self._sub = await self.bus.nc.subscribe(inbox, cb=self._on_msg, pending_msgs_limit=-1)
        self.stats.resubscribed += 1

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        self._credit = 0
        if sub is not None and not self.bus.nc.is_closed:
            with anyio.CancelScope(shield=True):
                await _quietly(sub.unsubscribe())

    # -- pulling -----------------------------------------------------------------------------

    def _free(self) -> int:
        return self.settings.concurrency - len(self._held) - self._credit

    def _should_pull(self, threshold: int | None = None) -> bool:
        """Enough free slots to ask for more: half a batch, or any when none is asked."""
        if threshold is None:
            threshold = max(1, min(self.settings.batch, self.settings.concurrency) // 2)
        free = self._free()
        return free >= threshold or (free > 0 and self._credit == 0)

    async def _request_loop(self) -> None:
        cap = self.settings.concurrency
        threshold = max(1, min(self.settings.batch, cap) // 2)
        api = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        sub = self._sub
        assert sub is not None
        while not self._stopping.is_set():
            if self.bus.reconnects != self._seen_reconnects:
                raise nats.errors.Error("reconnected: pull requests on the server are gone")
            if self._consumer_gone:
                raise nats.errors.Error(f"consumer {self.durable} was deleted: re-creating it")
            now = time.monotonic()
            if now - self._last_check > _CHECK_S:
                await self._check_consumer()
                continue
            if self.bus.stalled is not None:
                # The store takes no outputs: pull nothing new (held work keeps its
                # in-progress acks) until a held publish goes through.
                with anyio.move_on_after(_HEARTBEAT_S):
                    await self.bus.store_available()
                self._last_activity = time.monotonic()
                continue
            if self._credit > 0 and now - self._last_activity > 3 * _HEARTBEAT_S:
                raise nats.errors.Error("no heartbeat from the consumer: re-subscribing")
            if self._should_pull(threshold):
                n = min(self._free(), self.settings.batch)
                req = {
                    "batch": n,
                    "expires": int(_EXPIRES_S * 1e9),
                    "idle_heartbeat": int(_HEARTBEAT_S * 1e9),
                }
                self._credit += n
                self._last_activity = now
                await self.bus.nc.publish(api, json.dumps(req).encode(), reply=sub.subject)
                continue
            self._want_pull = anyio.Event()
            with anyio.move_on_after(_HEARTBEAT_S):
                await self._want_pull.wait()

    async def _on_msg(self, msg: Msg) -> None:
        # Runs on nats-py's subscription task: bookkeeping only, the work is a child task.
        self._last_activity = time.monotonic()
        status = PullStatus.of(msg)
        if status is not None:
            if status.heartbeat:
                return
            if status.pending is not None:
                self._credit = max(0, self._credit - status.pending)
            elif status.request_ended:
                self._credit = 0
            if status.consumer_deleted:
                self._consumer_gone = True  # re-create it rather than pull from nothing
            self._want_pull.set()
            return
        self._credit = max(0, self._credit - 1)
        if self._credit == 0 and self._free() > 1:
            # What was asked for has come and slots are free (this message takes one):
            # ask again now, not when a handler ends (a burst of work, a fan-out's items).
            self._want_pull.set()
        if not self._accepting or self._stopping.is_set():
            await _quietly(msg.nak())
            return
        self._held.add(msg)
        try:
            assert self._send is not None
            self._send.send_nowait(msg)
        except (anyio.WouldBlock, anyio.ClosedResourceError):  # more than asked, or stopping
            self._held.settled(msg)
            await _quietly(msg.nak())

    # -- handling ----------------------------------------------------------------------------

    async def _worker(self, recv: MemoryObjectReceiveStream[Msg]) -> None:
        hold_publishes()  # a handler's outputs wait for a full store; the message stays held
        async for msg in recv:
            await self._handle(msg)

    async def _replay(self, msg: Msg, delivery: Delivery) -> bool:
        """For a message read again by a re-created consumer: True when it was answered
        already (ack it, do not handle it again)."""
        seq = delivery.stream_seq
        if self._pending is not None and seq not in self._pending:
            return True
        # The old consumer's delivery of it may still run here: its outcome decides.
        await self._held.until_settled(seq, besides=msg)
        msg_id = (msg.headers or {}).get(headers.MSG_ID) or f"{self.bus.stream_name}-{seq}"
        return await self.bus.consumers.answered(msg.subject, msg_id, self.sender, seq)

    async def _handle(self, msg: Msg) -> None:
        attrs = self._meter.attributes(msg.subject)
        with handling(attrs) as outcome:
            await self._settle(msg, attrs, outcome)

    async def _settle(self, msg: Msg, attrs: dict[str, str], outcome: dict[str, str]) -> None:
        try:
            delivery = Delivery.of(msg)
            delivered = delivery.delivered
            if delivered > 1:
                self.stats.redelivered += 1
                redelivered(attrs)
            if self.bus.stalled is not None:
                await self.bus.store_available()  # its answer could not be published now
            if delivery.stream_seq and delivery.stream_seq <= self._replay_until:
                if await self._replay(msg, delivery):
                    self.stats.skipped += 1
                    await msg.ack()
                    return
                delivery = delivery._replace(replayed=True)
            try:
                await self._dispatch(msg, delivery)
            except Reject as e:
                outcome["error.type"] = type(e).__qualname__
                await self._reject(msg, e, delivery)
            except Retry as e:
                outcome["error.type"] = type(e).__qualname__
                self.stats.retried += 1
                await msg.nak(delay=e.delay_s if e.delay_s is not None else self._delay(delivered))
            except Exception as e:
                outcome["error.type"] = type(e).__qualname__
                self.stats.retried += 1
                log.error("handler failed, will retry", consumer=self.durable, error=repr(e),
                          delivered=delivered, exc_info=True)
                await msg.nak(delay=self._delay(delivered))
            else:
                self.stats.handled += 1
                await msg.ack()
        except (nats.errors.Error, OSError) as e:
            log.warning("could not settle message; JetStream will redeliver", error=repr(e))
        except anyio.get_cancelled_exc_class():
            # A forced exit: give it back now, not after the ack wait. (The run's own nak of
            # what is in flight may come first or not at all, as tasks are cancelled.)
            with anyio.CancelScope(shield=True):
                await _quietly(msg.nak())
            raise
        finally:
            self._held.settled(msg)
            if self._should_pull():  # else the loop has nothing to do: do not wake it
                self._want_pull.set()

    async def _reject(self, msg: Msg, e: Reject, delivery: Delivery) -> None:
        if await reject(self.bus, msg, e, agent=self.durable, deliveries=delivery.delivered,
                        stream_seq=delivery.stream_seq, publish=self._dead_letter_on_reject,
                        retry_delay_s=self._delay(delivery.delivered)):
            self.stats.dead_lettered += 1

    def _delay(self, delivered: int) -> float:
        return self.settings.retry_delay(delivered)


async def _quietly(aw: Awaitable[Any]) -> None:
    with contextlib.suppress(nats.errors.Error, OSError):
        await aw
