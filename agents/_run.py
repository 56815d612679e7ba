"""``Run``: the one owner of a run's promises, while one of its messages is handled.

A run promises to end exactly once, on time, within its limits, with its
verdict, its best attempt and every call it paid for. While a handler works on
one of the run's messages, its ``Run`` holds all of that: the ``WorkState``
(the best attempt so far), the ``Ledger`` (every billed call, booked under one
key: the agent type, which for a step agent is its role), the deadline and the
cancel flag (``bounded()`` cuts whatever runs inside it the moment either
comes), and the one way to end it (``end``). ``Guards`` makes one per message;
steps, tools and custom agents reach it as ``ctx.run``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from swarmbus.bus import ArtifactStore, PayloadTooLargeError, SubjectTakenError, workflow_outcome
from swarmbus.protocols import (
    ArtifactRef,
    Code,
    ControlFlow,
    Design,
    Provenance,
    TaskResult,
    TaskStatus,
    Usage,
    WorkState,
    topics,
)

from .models import Ledger, LimitReached

if TYPE_CHECKING:
    from ._agent import Context

__all__ = [
    "SPILL_BYTES",
    "Run",
    "WorkflowEnded",
    "current_run",
    "end_workflow",
    "result_from",
    "spill",
]

SPILL_BYTES = 4 * 1024
"""Artifacts at least this large (bytes of JSON) move to the object store when a
message that carries them would be too large for the stream."""

Watch = Callable[[str, Callable[[], None]], Callable[[], None]]
"""Calls back when a workflow id's cancel flag is set; returns a function that stops."""

_LIMITS: frozenset[str] = frozenset({"budget_exceeded", "deadline_exceeded", "cancelled"})


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
    findings (none when approved), how often each route was taken (by route name,
    across steps) and work was sent back to each role, spend per role and in total:
    the very counts the limits were checked against."""
    routes: dict[str, int] = {}
    for edge, n in state.edges.items():
        name = edge.rpartition(".")[2]
        routes[name] = routes.get(name, 0) + n

    def typed(name: str, type_: type[Design] | type[Code]) -> Any:
        with contextlib.suppress(ValueError):
            return state.artifact(name, type_)
        return None

    return TaskResult(
        status=status,
        reason=reason,
        workflow=workflow or state.workflow,
        artifacts=state.artifacts,
        design=typed("design", Design),
        code=typed("code", Code),
        findings=[] if status == "approved" else state.findings,
        test_report=state.test_report,
        acceptance=state.acceptance,
        rounds=state.round,
        steps=state.steps,
        routes=routes,
        send_backs=dict(state.send_backs),
        code_revisions=state.send_backs.get("coder", 0),
        design_revisions=state.send_backs.get("architect", 0),
        spend=state.spend,
        total=state.total,
        step=step,
        provenance=provenance,
        usage=usage,
    )


async def spill(state: WorkState | TaskResult, objects: ArtifactStore) -> bool:
    """Move every inline artifact of ``state`` of ``SPILL_BYTES`` or more to the object
    store (its value becomes a reference): what a message does when the state it
    carries has grown too large. Returns whether anything moved."""
    moved = False
    for name, value in list(state.artifacts.items()):
        if ArtifactRef.of(value) is not None:
            continue
        data = json.dumps(value, separators=(",", ":")).encode()
        if len(data) >= SPILL_BYTES:
            state.artifacts[name] = (await objects.put(data)).as_value()
            moved = True
    return moved


async def end_workflow(
    ctx: Context[Any], result: TaskResult, *, model: str | None = None, after: int = 0
) -> bool:
    """Publish ``result`` as the workflow's only result (the server refuses a second), or,
    for a resumed run, as the one after the result at stream sequence ``after``.

    Its model header names the provenance's model, else ``model`` (the one that failed
    to answer, say). Artifacts too large for the stream move to the object store; if
    they cannot, the result goes out without them, saying so. Returns False when the
    workflow had ended already (this result is dropped)."""
    model = result.provenance.name if result.provenance else model
    try:
        try:
            sent = await ctx.publish(result, topic=topics.RESULT, round=result.rounds,
                                     expect_last_seq=after, model=model,
                                     workflow=result.workflow or None)
        except PayloadTooLargeError as e:
            slim = result.model_copy(update={"artifacts": dict(result.artifacts),
                                             "design": None, "code": None})
            try:
                if not await spill(slim, await ArtifactStore.open(ctx.bus)):
                    raise
            except Exception:  # the store cannot take them either: say so, keep the ending
                slim = slim.model_copy(update={
                    "artifacts": {},
                    "reason": f"{result.reason} (artifacts left out of the result: {e})"})
            sent = await ctx.publish(slim, topic=topics.RESULT, round=result.rounds,
                                     expect_last_seq=after, model=model,
                                     workflow=result.workflow or None)
    except SubjectTakenError:
        ctx.log.info("workflow had ended already; result dropped", status=result.status)
        return False
    if not sent.duplicate:  # a redelivered ending stored it once: count it once
        workflow_outcome(result.status)
    cost = result.total.cost_usd
    ctx.log.info("workflow ended", status=result.status, reason=result.reason[:300],
                 cost_usd=None if cost is None else round(cost, 6),
                 unpriced_calls=result.total.unpriced_calls)
    return True


class Run:
    """One run, while ``ctx``'s message is handled: ``state`` (the best attempt so far),
    ``ledger`` (the calls of this delivery), ``key`` (the one key its spend is booked
    under in ``state.spend``: the agent type, a step agent's role), the deadline and
    cancel flag, and ``end``.

    ``watch`` (from ``Guards``) calls back when the run's cancel flag is set; without
    it only ``check`` sees a cancel. ``on_end`` hears the workflow id (and the result
    it resumed from) once the run ended (``Guards`` drops later work of it).
    """

    def __init__(
        self,
        ctx: Context[Any],
        state: WorkState,
        ledger: Ledger,
        *,
        key: str,
        watch: Watch | None = None,
        cancelled: Callable[[str], bool] | None = None,
        on_end: Callable[[str, int], None] | None = None,
        ended_since: Callable[[str, float], bool] | None = None,
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.ledger = ledger
        self.key = key
        self.step = ""
        """The step being run (its id), named in the result when the run ends here."""
        self.last_error = ""
        """The last transient failure met while retrying (named when the deadline or a
        cancel cuts the wait)."""
        self._watch = watch
        self._cancelled = cancelled
        self._on_end = on_end
        self._ended_since = ended_since
        self.also_spent: Callable[[], Usage] | None = None
        """What others spent for this run while this message was handled and must be in
        its result if it ends here (a fan-out's other items), under ``key``."""
        self._born = time.monotonic()
        self._taken: list[Usage] = []  # what each take_spend added
        self._until: float | None = None  # the deadline on the monotonic clock
        self._deadline_seen: datetime | None = None
        self.ended = False

    @property
    def workflow_id(self) -> str:
        return self.ctx.workflow_id

    @property
    def deadline(self) -> datetime | None:
        return self.state.deadline

    def time_left_s(self) -> float | None:
        """Seconds until the deadline (negative once passed; None: no deadline). Read
        from the wall clock once per run, then from the monotonic one (checked before
        every call)."""
        if self.state.deadline is None:
            return None
        if self._until is None or self._deadline_seen != self.state.deadline:
            self._deadline_seen = self.state.deadline
            left = (self.state.deadline - datetime.now(UTC)).total_seconds()
            self._until = time.monotonic() + left
        return self._until - time.monotonic()

    def check(self) -> None:
        """Raise ``LimitReached`` when the run is cancelled or past its deadline, and
        ``WorkflowEnded`` when its result was published while this message was handled
        (by another item of a fan-out that spent the budget, say)."""
        if self._cancelled is not None and self._cancelled(self.workflow_id):
            raise LimitReached("cancelled", "cancelled on request")
        if not self.ended and self._ended_since is not None and self._ended_since(
                self.workflow_id, self._born):
            raise WorkflowEnded(f"run {self.workflow_id} ended while this work was handled")
        left = self.time_left_s()
        if left is not None and left <= 0:
            assert self.state.deadline is not None
            raise LimitReached("deadline_exceeded",
                               f"deadline {self.state.deadline.isoformat()} passed")

    @contextlib.contextmanager
    def bounded(self, what: str = "") -> Iterator[None]:
        """Run the block until the deadline or a cancel, whichever comes first: either
        cancels what is awaited inside (a model call and the SDK's retries, a retry
        wait, a sandbox run) and raises ``LimitReached`` after the block. ``what``
        names the work in the reason (``"step 'review'"``)."""
        left = self.time_left_s()
        scope = anyio.CancelScope(
            deadline=anyio.current_time() + left if left is not None else float("inf"))
        why: list[str] = []

        def cancel() -> None:
            why.append("cancelled")
            scope.cancel()

        stop = self._watch(self.workflow_id, cancel) if self._watch is not None else None
        try:
            with scope:
                yield
        finally:
            if stop is not None:
                stop()
        if scope.cancelled_caught:
            during = f" during {what}" if what else ""
            last = f"; last error: {self.last_error}" if self.last_error else ""
            if why:
                raise LimitReached("cancelled", f"cancelled on request{during}{last}")
            assert self.state.deadline is not None
            raise LimitReached("deadline_exceeded", f"deadline "
                               f"{self.state.deadline.isoformat()} passed{during}{last}")

    def take_spend(self) -> Usage:
        """Add what this delivery booked and did not add yet to ``state.spend[key]``;
        returns that part (taking twice never adds a call twice)."""
        new = self.ledger.take()
        self.state.spend[self.key] = self.state.spend.get(self.key, Usage()) + new
        self._taken.append(new)
        return new

    @property
    def spent_here(self) -> Usage:
        """What this delivery added to the spend so far."""
        return self._taken[0] if len(self._taken) == 1 else Usage.sum(self._taken)

    async def end(
        self,
        status: TaskStatus,
        reason: str,
        *,
        provenance: Provenance | None = None,
        model: str | None = None,
        retryable: bool = False,
    ) -> bool:
        """End the run: its spend (this delivery's included), its best attempt, and
        ``status``; the one way a handler ends a run. Past the deadline, any ending
        but a limit's is ``deadline_exceeded``, which ``swarmbus retry`` may resume
        (as any ending marked ``retryable``: a cause another attempt may not meet).
        Returns False when the run had ended already (its first result stands)."""
        if self.ended:
            return False
        self.ended = True
        self.take_spend()
        if self.also_spent is not None:
            self.state.spend[self.key] = self.state.spend.get(self.key, Usage()) + \
                self.also_spent()
        left = self.time_left_s()
        if status not in _LIMITS and left is not None and left <= 0:
            assert self.state.deadline is not None
            reason = (f"deadline {self.state.deadline.isoformat()} passed before the run "
                      f"could end as {status} ({reason})")
            status = "deadline_exceeded"
        result = result_from(self.state, status, reason, step=self.step,
                             provenance=provenance, usage=self.spent_here)
        result.retryable = retryable or status == "deadline_exceeded"
        ended = await end_workflow(self.ctx, result, model=model,
                                   after=self.state.resumed_after)
        if self._on_end is not None:
            self._on_end(self.workflow_id, self.state.resumed_after)
        return ended


class WorkflowEnded(ControlFlow):
    """The workflow has its result (this handler's, or an earlier one's)."""


_current: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
    "swarmbus_run", default=None)


def current_run() -> Run | None:
    """The run whose message this task handles (set by ``Guards``), if any."""
    return _current.get()


@contextlib.contextmanager
def running(run: Run) -> Iterator[Run]:
    token = _current.set(run)
    try:
        yield run
    finally:
        _current.reset(token)
