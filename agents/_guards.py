"""Budget, deadline and cancel, checked before every model call, for any agent.

``Guards`` is middleware: for a message that carries a ``WorkState`` it makes a
``Ledger`` current whose check runs before *every* provider call (a first
attempt, a repair, each model of a fallback chain), so a limit stops the next
call wherever it is. Hitting one ends the workflow: the result carries the
status, the reason, the best attempt so far and every call paid for, the
stopped handler's included. The built-in step runtime uses exactly this; a
custom agent opts in with ``middleware = (Guards(),)``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import nats.errors
import structlog
from nats.aio.subscription import Subscription

from swarmbus.bus import (
    Bus,
    KeyValueStore,
    PayloadTooLargeError,
    SubjectTakenError,
    WatchedKeys,
    cancel_flags,
)
from swarmbus.protocols import (
    Code,
    ControlFlow,
    Design,
    Message,
    Provenance,
    TaskResult,
    TaskStatus,
    Usage,
    WorkState,
)

from ._agent import Agent, Context, Next
from .models import Ledger, metered

__all__ = [
    "Guards",
    "LimitReached",
    "WorkflowEnded",
    "carried_spend",
    "end_workflow",
    "result_from",
]

log = structlog.get_logger("swarmbus.guards")

_ENDED_KEEP = 100_000
_CARRY_BUCKET = "carry"
_CARRY_TTL_S = 24 * 3600.0


class LimitReached(ControlFlow):
    """A limit stopped a model call: the workflow ends with ``status``."""

    def __init__(self, status: TaskStatus, reason: str) -> None:
        super().__init__(reason)
        self.status: TaskStatus = status
        self.reason = reason


class WorkflowEnded(ControlFlow):
    """The workflow has its result (this handler's, or an earlier one's)."""


def _state_of(message: Message) -> WorkState | None:
    state = vars(message).get("state")  # a field (getattr of a missing one is slow)
    return state if isinstance(state, WorkState) else None


def result_from(
    state: WorkState,
    status: TaskStatus,
    reason: str,
    *,
    workflow: str = "",
    step: str = "",
    provenance: Provenance | None = None,
    usage: Usage | None = None,
) -> TaskResult:
    """The result for ``state``: the best attempt so far (every artifact), its open
    findings (none when approved), edge counts, spend per role and in total."""
    routes: dict[str, int] = {}
    for edge, n in state.edges.items():
        name = edge.rsplit(".", 1)[-1]
        routes[name] = routes.get(name, 0) + n

    def typed(name: str, type_: type[Design] | type[Code]) -> Any:
        with contextlib.suppress(ValueError):
            return state.artifact(name, type_)
        return None

    return TaskResult(
        status=status,
        reason=reason,
        workflow=workflow,
        artifacts=state.artifacts,
        design=typed("design", Design),
        code=typed("code", Code),
        findings=[] if status == "approved" else state.findings,
        test_report=state.test_report,
        acceptance=state.acceptance,
        rounds=state.round,
        steps=state.steps,
        routes=routes,
        code_revisions=routes.get("revise_code", 0),
        design_revisions=routes.get("revise_design", 0),
        spend=state.spend,
        total=state.total,
        step=step,
        provenance=provenance,
        usage=usage,
    )


async def end_workflow(
    ctx: Context[Any], result: TaskResult, *, model: str | None = None
) -> bool:
    """Publish ``result`` as the workflow's only result (the server refuses a second).

    Its model header names the provenance's model, else ``model`` (the one that failed
    to answer, say). A result too large for the stream goes out without its artifacts,
    saying so. Returns False when the workflow had ended already (this result is dropped)."""
    model = result.provenance.name if result.provenance else model
    try:
        try:
            await ctx.publish(result, topic="result", round=result.rounds, first=True,
                              model=model, workflow=result.workflow or None)
        except PayloadTooLargeError as e:
            slim = result.model_copy(update={
                "artifacts": {}, "design": None, "code": None,
                "reason": f"{result.reason} (artifacts left out of the result: {e})"})
            await ctx.publish(slim, topic="result", round=result.rounds, first=True,
                              model=model, workflow=result.workflow or None)
    except SubjectTakenError:
        ctx.log.info("workflow had ended already; result dropped", status=result.status)
        return False
    cost = result.total.cost_usd
    ctx.log.info("workflow ended", status=result.status, reason=result.reason[:300],
                 cost_usd=None if cost is None else round(cost, 6),
                 unpriced_calls=result.total.unpriced_calls)
    return True


class Guards:
    """Middleware: limits checked before every model call; ended workflows skipped.

    For a message with a ``WorkState`` (``msg.state``): drops it when its
    workflow has ended; makes a ``Ledger`` current (``ctx.ledger``) that checks
    cancel, deadline and budget before every provider call and books every
    call; a ``LimitReached`` ends the workflow with the best attempt; spend of
    a delivery that fails (and is redelivered) is carried to the next delivery,
    so a call paid for is never lost from the total. Messages without a state
    pass through untouched.
    """

    def __init__(self, *, share_cache: bool = False) -> None:
        self.share_cache = share_cache
        self._cancel: WatchedKeys | None = None
        self._carry: KeyValueStore | None = None
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._maybe_ended: set[str] = set()
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
            self._maybe_ended.add(msg.subject[len(prefix):].split(".", 1)[0])
            if len(self._maybe_ended) > _ENDED_KEEP:
                self._maybe_ended.clear()

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

    def mark_ended(self, workflow_id: str) -> None:
        self._ended[workflow_id] = None
        if len(self._ended) > _ENDED_KEEP:
            self._ended.popitem(last=False)

    async def ended(self, ctx: Context[Any]) -> bool:
        """Whether the workflow has its result in the stream: known here, or asked of the
        server when a result was heard published or the message is a redelivery (or
        replayed by a re-created consumer)."""
        wf = ctx.workflow_id
        if wf in self._ended:
            return True
        if ctx.deliveries > 1 or ctx.delivery.replayed or wf in self._maybe_ended:
            self._maybe_ended.discard(wf)
            if await ctx.bus.last(wf, "result") is not None:
                self.mark_ended(wf)
                return True
        return False

    async def cancelled(self, workflow_id: str) -> bool:
        return self._cancel is not None and await self._cancel.contains(workflow_id)

    def checker(self, state: WorkState, workflow_id: str) -> Any:
        """The check a ledger runs before every provider call for this workflow."""
        cancel = self._cancel

        def check(ledger: Ledger, model: str) -> None:
            if cancel is not None and cancel.contains_now(workflow_id):
                raise LimitReached("cancelled", "cancelled on request")
            if state.deadline is not None and datetime.now(UTC) >= state.deadline:
                raise LimitReached("deadline_exceeded",
                                   f"deadline {state.deadline.isoformat()} passed")
            spent = ledger.spent_usd
            if spent >= state.budget_usd:
                unknown = ledger.total.unpriced_calls
                extra = f" ({unknown} unpriced calls not counted)" if unknown else ""
                raise LimitReached(
                    "budget_exceeded",
                    f"spent ${spent:.4f} of ${state.budget_usd:.4f}{extra}"
                    + (f"; stopped before calling {model}" if model else ""))

        return check

    async def __call__(self, call_next: Next, message: Message, ctx: Context[Any]) -> None:
        state = _state_of(message)
        if state is None:
            await call_next()
            return
        await self.run(ctx, state, call_next)

    async def run(self, ctx: Context[Any], state: WorkState, body: Next) -> None:
        """Run ``body`` for ``state``'s workflow under the guards (what the middleware
        does; the step runtime calls it for a task, whose state it makes itself)."""
        if await self.ended(ctx):
            ctx.log.info("work for an ended workflow dropped")
            return
        if self._cancel is not None:
            await self._cancel.contains(ctx.workflow_id)  # re-reads the flags after a reconnect
        carried = await self._carried(ctx)
        ledger = Ledger(
            scope="" if self.share_cache else ctx.workflow_id,
            check=self.checker(state, ctx.workflow_id),
            redelivery=ctx.deliveries > 1 and carried is None,
            spent_before=state.total,
            carried=carried,
        )
        try:
            with metered(ledger):
                ledger.before_call("")  # a limit hit already ends it before any work
                await body()
        except LimitReached as e:
            spend = ledger.take()
            state.spend[ctx.agent] = state.spend.get(ctx.agent, Usage()) + spend
            await end_workflow(ctx, result_from(state, e.status, e.reason, usage=spend,
                                                workflow=state.workflow))
            self.mark_ended(ctx.workflow_id)
        except WorkflowEnded:
            self.mark_ended(ctx.workflow_id)
        except BaseException:
            await self._carry_over(ctx, ledger.take())
            raise

    async def _carried(self, ctx: Context[Any]) -> Usage | None:
        if ctx.deliveries <= 1 or self._carry is None:
            return None
        try:
            raw = await self._carry.get(_carry_key(ctx))
        except Exception as e:  # best effort: the cache still charges a redelivered hit
            log.warning("could not read carried spend", error=repr(e))
            return None
        return Usage.model_validate_json(raw) if raw else None

    async def _carry_over(self, ctx: Context[Any], usage: Usage) -> None:
        if self._carry is None or (usage.calls == 0 and usage.priced_cost_usd == 0):
            return
        try:
            await self._carry.put(_carry_key(ctx), usage.model_dump_json().encode())
        except Exception as e:
            log.warning("could not carry spend to the next delivery", error=repr(e),
                        priced_cost_usd=usage.priced_cost_usd, calls=usage.calls)


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
