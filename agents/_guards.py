"""Budget, deadline and cancel for any agent: the middleware that makes a ``Run``.

``Guards`` is middleware: for a message that carries a ``WorkState`` it makes a
``Run`` (``ctx.run``) with a ``Ledger`` (``ctx.ledger``) current, and runs the
handler inside ``Run.bounded()``: the ledger checks the budget before *every*
provider call (a first attempt, a repair, each model of a fallback chain) and
books every call; the deadline and the cancel flag cut whatever is in flight
the moment they come. A limit hit ends the workflow through ``Run.end``: the
result carries the status, the reason, the best attempt so far and every call
paid for, the stopped handler's included. The built-in step runtime uses
exactly this; a custom agent opts in with ``middleware = (Guards(),)``.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from typing import Any

import anyio
import nats.errors
import structlog
from nats.aio.subscription import Subscription

from swarmbus.bus import (
    Bus,
    KeyValueStore,
    WatchedKeys,
    cancel_flags,
    scrub,
)
from swarmbus.protocols import (
    Message,
    Usage,
    WorkState,
    topics,
)

from ._agent import Agent, Context, Next
from ._run import Run, WorkflowEnded, current_run, running
from .models import Ledger, LimitReached, metered

__all__ = [
    "Guards",
    "WorkflowEnded",
    "carried_spend",
    "last_error",
]

log = structlog.get_logger("swarmbus.guards")

_ENDED_KEEP = 100_000
_CARRY_BUCKET = "carry"
_CARRY_TTL_S = 24 * 3600.0


def _state_of(message: Message) -> WorkState | None:
    state = vars(message).get("state")  # a field (getattr of a missing one is slow)
    return state if isinstance(state, WorkState) else None


class Guards:
    """Middleware: limits checked before every model call; ended workflows skipped.

    For a message with a ``WorkState`` (``msg.state``): drops it when its
    workflow has ended; makes a ``Run`` current (``ctx.run``, with its ``Ledger``
    as ``ctx.ledger``) and runs the handler inside ``Run.bounded()``, so the
    deadline and a cancel cut what is in flight, and the budget is checked before
    every provider call; a ``LimitReached`` ends the workflow with the best
    attempt; every paid call is stored as it is booked, and a failed delivery's
    spend is carried to the next delivery, so a call paid for is never lost from
    the total. Messages without a state pass through untouched.
    """

    def __init__(self, *, share_cache: bool = False) -> None:
        self.share_cache = share_cache
        self._cancel: WatchedKeys | None = None
        self._carry: KeyValueStore | None = None
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._maybe_ended: set[str] = set()
        self._heard: OrderedDict[str, float] = OrderedDict()  # run -> when its result came
        self._sub: Subscription | None = None
        self._bus: Bus | None = None

    async def setup(self, bus: Bus, agent: Agent) -> None:
        if self._bus is not None:
            return  # shared by several agents of one process
        self._bus = bus
        self._cancel = await WatchedKeys(bus, await cancel_flags(bus)).start()
        self._carry = await bus.key_value(_CARRY_BUCKET, ttl_s=_CARRY_TTL_S)
        prefix = f"swarm.{bus.namespace}."

        async def on_result(msg: Any) -> None:
            wf = msg.subject[len(prefix):].split(".", 1)[0]
            self._maybe_ended.add(wf)
            if len(self._maybe_ended) > _ENDED_KEEP:
                self._maybe_ended.clear()
            self._heard[wf] = time.monotonic()
            self._heard.move_to_end(wf)
            if len(self._heard) > _ENDED_KEEP:
                self._heard.popitem(last=False)

        # A core subscription hears every result *published*, also one the stream refused
        # or lost in a failover: it only says "maybe ended", which the stream confirms.
        try:
            self._sub = await bus.nc.subscribe(f"{prefix}*.result", cb=on_result)
        except nats.errors.Error as e:  # e.g. a user whose permissions forbid it
            log.warning("cannot follow ended workflows; relying on the server's check",
                        error=repr(e))

    async def aclose(self) -> None:
        if self._cancel is not None:
            await self._cancel.aclose()
            self._cancel = None
        sub, self._sub = self._sub, None
        if sub is not None and self._bus is not None and not self._bus.nc.is_closed:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def mark_ended(self, workflow_id: str, resumed_after: int = 0) -> None:
        """Remember that the run (resumed after the result at ``resumed_after``, if it
        was) has its result: later work of it is dropped."""
        self._ended[_ended_key(workflow_id, resumed_after)] = None
        if len(self._ended) > _ENDED_KEEP:
            self._ended.popitem(last=False)

    async def ended(self, ctx: Context[Any], state: WorkState | None = None) -> bool:
        """Whether the run ``state`` belongs to has its result in the stream (one after
        the result it resumed from, if it did): known here, or asked of the server when
        a result was heard published, the message is a redelivery (or replayed by a
        re-created consumer), or the run was resumed."""
        wf = ctx.workflow_id
        after = state.resumed_after if state is not None else 0
        if _ended_key(wf, after) in self._ended:
            return True
        if ctx.deliveries > 1 or ctx.delivery.replayed or wf in self._maybe_ended or after:
            self._maybe_ended.discard(wf)
            last = await ctx.bus.last(wf, topics.RESULT)
            if last is not None and last.seq > after:
                self.mark_ended(wf, after)
                return True
        return False

    async def cancelled(self, workflow_id: str) -> bool:
        return self._cancel is not None and await self._cancel.contains(workflow_id)

    def cancelled_now(self, workflow_id: str) -> bool:
        """Whether the workflow's cancel flag is set (the mirror as it stands)."""
        return self._cancel is not None and self._cancel.contains_now(workflow_id)

    def ended_since(self, workflow_id: str, since: float) -> bool:
        """Whether a result of the run was heard published after ``since`` (the
        monotonic clock): it ended while a message of it was being handled."""
        heard = self._heard.get(workflow_id)
        return heard is not None and heard > since

    def _watch(self, workflow_id: str, callback: Any) -> Any:
        if self._cancel is None:
            return lambda: None
        return self._cancel.watch(workflow_id, callback)

    async def __call__(self, call_next: Next, message: Message, ctx: Context[Any]) -> None:
        state = _state_of(message)
        if state is None:
            await call_next()
            return
        await self.run(ctx, state, call_next)

    async def run(self, ctx: Context[Any], state: WorkState, body: Next) -> None:
        """Run ``body`` for ``state``'s workflow as a ``Run`` (what the middleware does;
        the step runtime calls it for a task, whose state it makes itself)."""
        if await self.ended(ctx, state):
            ctx.log.info("work for an ended workflow dropped")
            return
        if self._cancel is not None:
            await self._cancel.contains(ctx.workflow_id)  # re-reads the flags after a reconnect
        carried = await self._carried(ctx)
        ledger = Ledger(
            scope="" if self.share_cache else ctx.workflow_id,
            check=_check_run,
            redelivery=ctx.deliveries > 1 and carried is None,
            spent_before=state.total,
            carried=carried,
            budget_usd=state.budget_usd,
            persist=self._persister(ctx),
        )
        run = Run(ctx, state, ledger, key=ctx.agent, watch=self._watch,
                  cancelled=self.cancelled_now, on_end=self.mark_ended,
                  ended_since=self.ended_since)
        try:
            with running(run), metered(ledger):
                ledger.before_call("")  # a limit hit already ends it before any work
                with run.bounded():
                    await body()
        except LimitReached as e:
            await run.end(e.status, e.reason)
        except WorkflowEnded:
            self.mark_ended(ctx.workflow_id, state.resumed_after)
        except BaseException as e:
            await self._carry_over(ctx, ledger.usage, e)
            raise

    def _persister(self, ctx: Context[Any]) -> Any:
        store = self._carry
        if store is None:
            return None
        key = _carry_key(ctx)

        async def persist(usage: Usage) -> None:
            await store.put(key, usage.model_dump_json().encode())

        return persist

    async def _carried(self, ctx: Context[Any]) -> Usage | None:
        if ctx.deliveries <= 1 or self._carry is None:
            return None
        try:
            raw = await self._carry.get(_carry_key(ctx))
        except Exception as e:  # best effort: the cache still charges a redelivered hit
            log.warning("could not read carried spend", error=repr(e))
            return None
        return Usage.model_validate_json(raw) if raw else None

    async def _carry_over(self, ctx: Context[Any], usage: Usage, error: BaseException) -> None:
        """Keep a failed delivery's whole spend for the next one (calls booked without
        ``Ledger.book``, or free ones, are kept only here), and what failed it, for
        whoever ends the run if every delivery fails."""
        if self._carry is None or isinstance(error, anyio.get_cancelled_exc_class()):
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                if usage.calls or usage.priced_cost_usd:
                    await self._carry.put(_carry_key(ctx), usage.model_dump_json().encode())
                await self._carry.put("error." + _carry_key(ctx), scrub(
                    f"{type(error).__name__}: {error}")[:1000].encode())
            except Exception as e:
                log.warning("could not carry spend to the next delivery", error=repr(e),
                            priced_cost_usd=usage.priced_cost_usd, calls=usage.calls)


def _check_run(ledger: Ledger, model: str) -> None:
    """The ledger's check before every call: the current run's deadline and cancel. (A
    function, not a closure over the run: the run holds the ledger, and a cycle would
    keep every handled message's run until the next full collection.)"""
    run = current_run()
    if run is not None:
        run.check()


def _ended_key(workflow_id: str, resumed_after: int) -> str:
    # The id itself for a run never resumed (most): no new string kept per run.
    return f"{workflow_id}@{resumed_after}" if resumed_after else workflow_id


def _carry_key(ctx: Context[Any]) -> str:
    return f"{ctx.agent}.{ctx.envelope.msg_id}"


async def carried_spend(bus: Bus, agent: str, msg_id: str) -> Usage | None:
    """What failed deliveries of message ``msg_id`` to ``agent`` spent (None: nothing
    recorded). For whoever ends a workflow on a message's behalf."""
    try:
        store = await bus.key_value(_CARRY_BUCKET, ttl_s=_CARRY_TTL_S)
        raw = await store.get(f"{agent}.{msg_id}")
    except Exception as e:
        log.warning("could not read carried spend", error=repr(e))
        return None
    return Usage.model_validate_json(raw) if raw else None


async def last_error(bus: Bus, agent: str, msg_id: str) -> str:
    """What failed the last delivery of message ``msg_id`` to ``agent`` ('' if unknown)."""
    try:
        store = await bus.key_value(_CARRY_BUCKET, ttl_s=_CARRY_TTL_S)
        raw = await store.get(f"error.{agent}.{msg_id}")
    except Exception as e:
        log.warning("could not read the last error", error=repr(e))
        return ""
    return raw.decode(errors="replace") if raw else ""
