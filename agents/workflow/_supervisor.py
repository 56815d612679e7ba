"""The supervisor: ends the runs that no agent will end.

Every daemon runs this small agent. It takes three topics:

- ``deadletter``: when the agent that gave up on a task or a step is the role the
  stored workflow assigns to it (a custom agent giving up ends nothing), the
  run ends ``failed`` with the reason;
- ``deadline``: the run's deadline message, published by the server's scheduler
  at the deadline (``Nats-Schedule``), so a run whose next step no agent takes
  still ends ``deadline_exceeded`` on time;
- ``cancel``: the run's cancel flag is set (agents in the middle of its work
  abort it) and, when no agent has ended it a moment later (its work waits in a
  queue, or for a retry), the run ends ``cancelled``.

Each ending carries the best attempt found in the stream (the run's latest work
message, or the dead-lettered one) and its whole spend: what that message's
state carries plus what its handler's deliveries booked and stored (the carried
spend), so a waiting client is never left hanging and no paid call is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from swarmbus.bus import (
    DEADLINE_HEADER,
    Bus,
    StoredMessage,
    WorkflowStore,
    cancel_flags,
    deadline_msg_id,
    metric_scope,
    schedulable,
)
from swarmbus.protocols import (
    Cancel,
    CompiledWorkflow,
    DeadLetter,
    Deadline,
    Meta,
    Subject,
    SubjectError,
    TaskRequest,
    TaskStatus,
    Usage,
    Work,
    WorkItem,
    WorkState,
    headers,
    initial_state,
    topics,
)

from .._agent import Agent, Context, handles
from .._guards import carried_spend, last_error
from .._run import Run
from ..models import Ledger
from ._fanout import Fanouts

__all__ = ["Supervisor"]

_EARLY_S = 1.0
"""A deadline message this much before the run's deadline (a clock apart, or a deadline
that moved) is not acted on: the real one is scheduled instead."""


@dataclass
class _Latest:
    """A run's latest work message, as the supervisor ends a run from it."""

    state: WorkState
    topic: str
    msg_id: str
    workflow: CompiledWorkflow | None
    item: WorkItem | None = None


class Supervisor(Agent):
    """Ends a run that no agent will end: dead-lettered work (``failed``), a deadline
    no agent met (``deadline_exceeded``), a cancel no agent acted on (``cancelled``).
    ``grace_s``: how long it leaves an agent that holds the run's work to end it itself
    (with the freshest spend) before it does."""

    name = "supervisor"
    start = "pending"

    def __init__(self, *, grace_s: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grace_s = grace_s
        self._store: WorkflowStore | None = None
        self._bus: Bus | None = None
        self._fanouts = Fanouts()

    async def setup(self, bus: Bus) -> None:
        await super().setup(bus)
        self._bus = bus
        self._store = await WorkflowStore.open(bus)
        await self._fanouts.setup(bus)

    # -- the three topics ---------------------------------------------------------------

    @handles(topics.DEADLETTER)
    async def on_dead_letter(self, letter: DeadLetter, ctx: Context[DeadLetter]) -> None:
        if letter.reason == "id_taken":
            return  # the first workflow under that id goes on
        try:
            topic = Subject.parse(letter.subject).topic
        except SubjectError:
            return
        if topic != topics.TASK and topics.step_of_topic(topic) is None:
            return
        assert self._bus is not None
        # The letter's message as stored (or, gone from the stream, as the letter carries
        # it), so the run is read, and its workflow found, as from any of its messages.
        stored = await self._bus.get(letter.stream_seq) if letter.stream_seq else None
        if stored is None and letter.body and not letter.body_truncated:
            stored = StoredMessage(letter.stream_seq or 0, letter.subject,
                                   letter.body.encode(), dict(letter.headers))
        latest = await self._read(stored) if stored is not None else None
        wf = latest.workflow if latest is not None else await self._workflow(
            letter.headers.get(headers.WORKFLOW))
        role = wf.role_of_topic(topic) if wf is not None else None
        if role is None and topic != topics.TASK:
            return  # not a step of a workflow we know
        if role is not None and wf is not None and letter.agent not in (role, wf.consumer(role)):
            return  # a custom agent gave up on its copy: the workflow goes on
        if latest is None:
            latest = _Latest(WorkState(task=TaskRequest(goal="(the task could not be read)")),
                             topic, letter.headers.get(headers.MSG_ID, ""), wf)
        if letter.headers.get(headers.MSG_ID):
            latest.msg_id = letter.headers[headers.MSG_ID]
        reason = (f"{letter.agent or 'an agent'} gave up on {topic} ({letter.reason}): "
                  f"{letter.error}")
        agent = role or letter.agent  # spend and errors are kept under the agent type
        if letter.reason == "max_deliveries" and agent:
            error = await last_error(self._bus, agent, latest.msg_id)
            reason += f"; last error: {error}" if error else ""
        # A step that failed on every delivery may pass another time (a crash, an outage);
        # a message that cannot be read, or that its agent refused, will not.
        await self._end(ctx, latest, agent, "failed", reason[:4000],
                        retryable=letter.reason == "max_deliveries")

    @handles(topics.DEADLINE)
    async def on_deadline(self, msg: Deadline, ctx: Context[Deadline]) -> None:
        latest = await self._latest(ctx)
        if latest is None:
            return
        deadline = latest.state.deadline
        if deadline is not None and deadline - datetime.now(UTC) > timedelta(seconds=_EARLY_S):
            await self._arm(ctx, deadline, latest)  # not yet: the run's own deadline
            return
        await anyio.sleep(self.grace_s)  # an agent holding the work ends it itself
        latest = await self._latest(ctx)
        if latest is None:
            return
        waiting = self._waiting_on(latest)
        when = deadline.isoformat() if deadline is not None else msg.at.isoformat()
        await self._end(ctx, latest, self._role(latest), "deadline_exceeded",
                        f"deadline {when} passed{waiting}")

    @handles(topics.CANCEL)
    async def on_cancel(self, msg: Cancel, ctx: Context[Cancel]) -> None:
        assert self._bus is not None
        flags = await cancel_flags(self._bus)
        await flags.put(ctx.workflow_id, b"1")  # agents holding its work abort it now
        await anyio.sleep(self.grace_s)
        latest = await self._latest(ctx)
        if latest is None:
            return
        why = f": {msg.reason}" if msg.reason else ""
        await self._end(ctx, latest, self._role(latest), "cancelled",
                        f"cancelled on request{why}{self._waiting_on(latest)}")

    # -- reading the run from the stream ---------------------------------------------------

    async def _latest(self, ctx: Context[Any]) -> _Latest | None:
        """The run's latest work message (None: the run has ended, or has no task)."""
        assert self._bus is not None
        history = await self._bus.history(ctx.workflow_id)
        for stored in reversed(history):
            try:
                topic = Subject.parse(stored.subject).topic
            except SubjectError:
                continue
            if topic == topics.RESULT:
                return None
            if topic == topics.TASK or topics.step_of_topic(topic) is not None:
                latest = await self._read(stored)
                if latest is not None:
                    return latest
        return None

    async def _workflow(self, ref: str | None, named: str | None = None) -> CompiledWorkflow | None:
        """The workflow a run follows (see ``WorkflowStore.of_run``)."""
        assert self._store is not None
        return await self._store.of_run(ref, named)

    async def _read(self, stored: StoredMessage) -> _Latest | None:
        """The state ``stored`` carries and the workflow the run follows: decoded, or, when
        it does not decode, read field by field (its task, artifacts and spend), so a
        malformed message still ends with its best attempt and its spend."""
        assert self._bus is not None
        try:
            topic = Subject.parse(stored.subject).topic
        except SubjectError:
            return None
        msg_id = stored.headers.get(headers.MSG_ID) or f"{self._bus.stream_name}-{stored.seq}"
        ref = stored.headers.get(headers.WORKFLOW)
        env = stored.try_decode()
        if env is not None and isinstance(env.message, Work):
            state = env.message.state
            wf = await self._workflow(ref or state.workflow, state.task.workflow)
            return _Latest(state, topic, msg_id, wf, env.message.item)
        if env is not None and isinstance(env.message, TaskRequest):
            # A task, no work yet: the run follows what the task names, not the default.
            wf = await self._workflow(ref, env.message.workflow)
            state = initial_state(env.message, wf, _parse_time(stored.time))
            armed = _parse_time(stored.headers.get(DEADLINE_HEADER))
            if wf is None and armed is not None:
                # Its workflow is gone from the store: the deadline its submitter counted
                # from that workflow (and armed) stands, not the default timeout.
                state.deadline = armed
            return _Latest(state, topic, msg_id, wf)
        read = _tolerant_state(stored.data)
        if read is None:
            return None
        wf = await self._workflow(ref or read.workflow, read.task.workflow)
        return _Latest(read, topic, msg_id, wf)

    def _role(self, latest: _Latest) -> str:
        return latest.workflow.role_of_topic(latest.topic) or "" if latest.workflow else ""

    def _waiting_on(self, latest: _Latest) -> str:
        role = self._role(latest)
        step = topics.step_of_topic(latest.topic) or (
            latest.workflow.entry.id if latest.workflow else "")
        if not step:
            return ""
        return f"; step {step!r} was waiting" + (f" for the {role}" if role else "")

    async def _arm(self, ctx: Context[Any], deadline: datetime, latest: _Latest) -> None:
        assert self._bus is not None
        if not schedulable(deadline):
            return
        meta = Meta(deadline_msg_id(ctx.workflow_id, deadline), sender=self.name,
                    workflow=latest.state.workflow or None)
        await self._bus.schedule(ctx.workflow_id, topics.DEADLINE_TIMER, Deadline(at=deadline),
                                 meta, at=deadline, target=topics.DEADLINE)

    async def _end(self, ctx: Context[Any], latest: _Latest, role: str, status: TaskStatus,
                   reason: str, *, retryable: bool = False) -> None:
        """End the run from ``latest``, with what its handler's deliveries booked."""
        assert self._bus is not None
        carried = await carried_spend(self._bus, role, latest.msg_id) if (
            role and latest.msg_id) else None
        run = Run(ctx, latest.state, Ledger(carried=carried), key=role or self.name)
        if latest.item is not None:  # a fan-out's: its other items' spend is the run's too
            others = await self._fanouts.spent_by_others(ctx.workflow_id, latest.item)
            run.also_spent = lambda: others
        run.step = topics.step_of_topic(latest.topic) or (
            latest.workflow.entry.id if latest.workflow else "")
        with metric_scope(workflow=latest.workflow.name if latest.workflow else ""):
            await run.end(status, reason, retryable=retryable)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _tolerant_state(body: bytes) -> WorkState | None:
    """What can be read of a work message's state that does not validate: its task,
    artifacts and spend (each part that validates), the rest left out."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python reads
        return None
    state = raw.get("state") if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        return None
    try:
        task = TaskRequest.model_validate(state.get("task"))
    except ValueError:
        task = TaskRequest(goal="(the task could not be read)")
    spend: dict[str, Usage] = {}
    for key, value in (state.get("spend") or {}).items():
        try:
            spend[str(key)] = Usage.model_validate(value)
        except ValueError:
            continue
    artifacts = state.get("artifacts")
    kept = {str(k): v for k, v in artifacts.items()} if isinstance(artifacts, dict) else {}
    fields: dict[str, Any] = {"task": task, "artifacts": kept, "spend": spend}
    for name in ("workflow", "round", "steps", "budget_usd", "deadline", "edges", "send_backs"):
        if name in state:
            try:
                WorkState.model_validate({"task": task, name: state[name]})
            except ValueError:
                continue
            fields[name] = state[name]
    return WorkState.model_validate(fields)
