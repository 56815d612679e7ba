"""What a namespace knows of its runs beside their messages: the cancel flags, the live
agents' announcements, the runs' deadlines (``Nats-Schedule``), and ``WorkflowStatus``,
where a run stands, folded from its messages (``apply_event``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from swarmbus.protocols import (
    AgentAnnouncement,
    DeadLetter,
    Message,
    Resume,
    TaskRequest,
    TaskResult,
    Usage,
    Work,
    topics,
)

from ._codec import Envelope
from ._kv import KeyValueStore

if TYPE_CHECKING:
    from ._bus import Bus

__all__ = [
    "AGENTS_BUCKET",
    "AGENTS_STORAGE",
    "AGENTS_TTL_S",
    "CANCEL_BUCKET",
    "DEADLINE_HEADER",
    "WorkflowStatus",
    "apply_event",
    "cancel_flags",
    "deadline_msg_id",
    "live_agents",
    "same_task",
    "schedulable",
    "serves",
]

CANCEL_BUCKET = "cancel"
CANCEL_TTL_S = 7 * 24 * 3600
AGENTS_BUCKET = "agents"
AGENTS_TTL_S = 20.0
AGENTS_STORAGE: Literal["memory"] = "memory"
"""Announcements live in memory: short-lived, and writable when the file store is full."""
DEADLINE_HEADER = "Swarm-Deadline"
"""On a task: the deadline (ISO 8601) its submitter scheduled already, so the entry agent
does not schedule the same one again."""


def deadline_msg_id(workflow_id: str, deadline: datetime) -> str:
    """The ``Nats-Msg-Id`` of a run's scheduled deadline (one per deadline)."""
    return f"deadline-{workflow_id}-{int(deadline.timestamp() * 1000)}"


def schedulable(deadline: datetime | None) -> bool:
    """Whether a deadline is worth a timer: still to come, and within the calendar (a
    deadline already passed ends the run at its first check)."""
    if deadline is None:
        return False
    try:
        return datetime.now(UTC) < deadline.astimezone(UTC) < _LATEST
    except (OverflowError, ValueError):
        return False


_LATEST = datetime(9000, 1, 1, tzinfo=UTC)



@dataclass(slots=True)
class WorkflowStatus:
    """Where a workflow stands, read from its messages in the stream.

    ``step`` is the step whose work is waiting or running, ``role`` the agent
    type that serves it (from the stored workflow), ``live`` whether any agent
    of that role is running in the namespace (None: not checked). ``spent``: the
    largest running total its messages carry (see ``Usage`` for what is priced).
    ``stalled``
    says why it cannot go on now (``storage full``: the stream takes no
    messages, agents hold their outputs), empty otherwise.
    """

    workflow_id: str
    known: bool
    step: str = ""
    role: str = ""
    live: bool | None = None
    last_topic: str = ""
    round: int = 0
    steps: int = 0
    spent: Usage = field(default_factory=Usage)
    workflow: str = ""
    """The hash of the workflow it follows (its messages' ``Swarm-Workflow``; ``describe``
    fills it for a run that has only its task)."""
    task_workflow: str = ""
    """The workflow its task names (``TaskRequest.workflow``: a name or hash; empty: the
    namespace's default), which a run with no work yet follows."""
    consumer: str = ""
    """The durable consumer that holds the waiting step's work (``<role>@<workflow>``)."""
    result: TaskResult | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    stalled: str = ""

    @property
    def working(self) -> str:
        """Who is on it: ``coder``, ``waiting for coder``, ``stalled: storage full``,
        ``done`` (for progress lines)."""
        if self.result is not None:
            return "done"
        if self.stalled:
            return f"stalled: {self.stalled}"
        if not self.role:
            return ""
        return self.role if self.live is not False else f"waiting for {self.role}"


def same_task(a: TaskRequest, b: TaskRequest) -> bool:
    """Whether two submissions are the same task (the submission time aside)."""
    skip = {"submitted_at"}
    return a.model_dump(mode="json", exclude=skip) == b.model_dump(mode="json", exclude=skip)


async def cancel_flags(bus: Bus) -> KeyValueStore:
    """The namespace's cancel flags: a key per cancelled workflow id."""
    return await bus.key_value(CANCEL_BUCKET, ttl_s=CANCEL_TTL_S)


async def live_agents(bus: Bus, *, make: bool = True) -> list[AgentAnnouncement]:
    """Every agent replica announced in the namespace, by agent then instance. With
    ``make=False`` (a reader that writes nothing) the bucket is not made where no agent
    ever ran: none are announced there."""
    store = await (bus.key_value(AGENTS_BUCKET, ttl_s=AGENTS_TTL_S, storage=AGENTS_STORAGE)
                   if make else bus.find_key_value(AGENTS_BUCKET))
    if store is None:
        return []
    out = []
    for key in await store.keys():
        raw = await store.get(key)
        if raw:
            with contextlib.suppress(ValueError):
                out.append(AgentAnnouncement.model_validate_json(raw))
    return sorted(out, key=lambda a: (a.agent, a.instance))


def serves(agents: Iterable[AgentAnnouncement], role: str, durable: str) -> bool:
    """Whether one of ``agents`` pulls ``role``'s work from consumer ``durable``
    (``<role>@<workflow>``); an announcement of the role for another workflow does not
    count, one that names no consumer does."""
    return any(a.consumer == durable or (not a.consumer and a.agent == role) for a in agents)


def _more(a: Usage, b: Usage) -> Usage:
    """The spend that has seen more: messages of one workflow carry its running total,
    and those of parallel branches each their own (so the larger is a lower bound)."""
    return b if (b.calls, b.priced_cost_usd) > (a.calls, a.priced_cost_usd) else a


def apply_event(st: WorkflowStatus, env: Envelope[Message]) -> None:
    """Fold one message into a status (used by ``status`` and live progress)."""
    msg = env.message
    st.known = True
    st.round = max(st.round, env.round)
    if isinstance(msg, TaskRequest | Work):
        st.last_topic = env.topic
        st.step = topics.step_of_topic(env.topic) or ""
        st.workflow = env.workflow or st.workflow
        if isinstance(msg, TaskRequest):
            st.task_workflow = msg.workflow or ""
        if isinstance(msg, Work):
            st.spent = _more(st.spent, msg.state.total)
    if isinstance(msg, TaskResult):
        st.result = msg
        st.last_topic = env.topic
        st.spent = _more(st.spent, msg.total)
    if isinstance(msg, Resume):
        st.result = None  # running again
    if isinstance(msg, DeadLetter):
        st.dead_letters.append(msg)
