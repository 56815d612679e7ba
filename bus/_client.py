"""``SwarmClient``: submit work, follow it, cancel it, from any Python service.

Needs no agent runtime: it speaks the wire protocol through ``Bus`` only.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import anyio
import nats.errors
from nats.js import api

from swarmbus.protocols import (
    ROLE_TOPICS,
    DeadLetter,
    Message,
    TaskRequest,
    TaskResult,
    WorkState,
    check_workflow_id,
    workflow_filter,
)

from ._bus import Bus, StoredMessage, StreamSettings
from ._codec import Envelope
from ._connect import NatsSettings
from ._kv import KeyValueStore

__all__ = ["CANCEL_BUCKET", "WORKING", "SwarmClient", "WorkflowStatus"]

CANCEL_BUCKET = "cancel"
CANCEL_TTL_S = 7 * 24 * 3600
WORKING = {
    "task": "architect",
    "revise.design": "architect",
    "design": "coder",
    "revise.code": "coder",
    "code": "reviewer",
    "result": "done",
}
"""Which role works on a workflow whose newest message is on a given topic."""


@dataclass(slots=True)
class WorkflowStatus:
    """Where a workflow stands, read from its messages in the stream."""

    workflow_id: str
    known: bool
    working: str = ""
    last_topic: str = ""
    round: int = 0
    steps: int = 0
    spent_usd: float = 0.0
    result: TaskResult | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)


class SwarmClient:
    """Connect with ``await SwarmClient.connect(url, namespace=...)``.

    ``submit`` publishes a ``TaskRequest`` (making sure the namespace's stream
    and the built-in roles' consumers exist, so work waits for agents that are
    not running yet); ``result`` awaits the outcome, also when it was published
    before the call; ``events`` streams a workflow's history then its new
    messages; ``cancel`` sets the flag the roles check before every model call.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._ready = False

    @classmethod
    async def connect(
        cls,
        nats: NatsSettings | str | None = None,
        *,
        namespace: str = "default",
        stream: StreamSettings | None = None,
    ) -> SwarmClient:
        """Raises ``BusUnavailableError`` if NATS cannot be reached in time."""
        return cls(await Bus.connect(nats, namespace=namespace, stream=stream))

    async def ensure_roles(self) -> None:
        """Create the built-in roles' consumers if missing (never changes existing ones)."""
        if not self._ready:
            for role, topics in ROLE_TOPICS.items():
                await self.bus.ensure_consumer(role, list(topics), update=False)
            self._ready = True

    async def submit(self, task: TaskRequest | str, *, workflow_id: str | None = None) -> str:
        """Publish a task; returns its workflow id. Submitting the same id twice
        within the duplicate window stores it once."""
        if isinstance(task, str):
            task = TaskRequest(goal=task)
        wf = check_workflow_id(workflow_id) if workflow_id else uuid.uuid4().hex
        await self.ensure_roles()
        await self.bus.publish(wf, "task", task, msg_id=f"task-{wf}", sender="client")
        return wf

    async def events(self, workflow_id: str) -> AsyncGenerator[Envelope[Message], None]:
        """Every message of the workflow, oldest first, then new ones as they come.
        Undecodable messages are skipped. To stop early, close it (``contextlib.aclosing``),
        which ends its subscription."""
        sub = await self.bus.js.subscribe(
            workflow_filter(self.bus.namespace, workflow_id),
            stream=self.bus.stream_name,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
            idle_heartbeat=5.0,
        )
        try:
            async for msg in sub.messages:
                seq = msg.metadata.sequence.stream if msg.metadata.sequence else 0
                stored = StoredMessage(seq, msg.subject, msg.data, dict(msg.headers or {}))
                env = stored.try_decode()
                if env is not None:
                    yield env
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(nats.errors.Error, OSError):
                    await sub.unsubscribe()

    async def result(self, workflow_id: str, *, timeout_s: float | None = None) -> TaskResult:
        """The workflow's result, waiting for it if needed. Raises ``TimeoutError``."""
        with anyio.fail_after(timeout_s):
            stored = await self.bus.last(workflow_id, "result")
            if stored is not None:
                env = stored.try_decode()
                if env is not None and isinstance(env.message, TaskResult):
                    return env.message
            async with contextlib.aclosing(self.events(workflow_id)) as events:
                async for env in events:
                    if isinstance(env.message, TaskResult):
                        return env.message
        raise TimeoutError  # pragma: no cover - the loop only ends by returning

    async def status(self, workflow_id: str) -> WorkflowStatus:
        """Where the workflow stands (from the stream; no agent is asked)."""
        history = await self.bus.history(workflow_id)
        st = WorkflowStatus(workflow_id, known=bool(history), steps=len(history))
        for stored in history:
            env = stored.try_decode()
            if env is None:
                continue
            apply_event(st, env)
        return st

    async def trail(self, workflow_id: str) -> list[StoredMessage]:
        """The workflow's whole history as stored (the audit trail)."""
        return await self.bus.history(workflow_id)

    async def cancel(self, workflow_id: str) -> None:
        """Ask the swarm to stop this workflow: the next role about to call a model
        publishes a ``cancelled`` result with the best attempt so far."""
        store = await cancel_flags(self.bus)
        await store.put(check_workflow_id(workflow_id), b"1")

    async def aclose(self) -> None:
        await self.bus.aclose()

    async def __aenter__(self) -> SwarmClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def cancel_flags(bus: Bus) -> KeyValueStore:
    """The namespace's cancel flags: a key per cancelled workflow id."""
    return await bus.key_value(CANCEL_BUCKET, ttl_s=CANCEL_TTL_S)


def apply_event(st: WorkflowStatus, env: Envelope[Message]) -> None:
    """Fold one message into a status (used by ``status`` and live progress)."""
    msg = env.message
    st.known = True
    st.last_topic = env.topic
    st.round = max(st.round, env.round)
    st.working = WORKING.get(env.topic, st.working)
    state = getattr(msg, "state", None)
    if isinstance(state, WorkState):
        st.spent_usd = max(st.spent_usd, state.total.cost_usd)
    if isinstance(msg, TaskResult):
        st.result = msg
        st.spent_usd = max(st.spent_usd, msg.total.cost_usd)
    if isinstance(msg, DeadLetter):
        st.dead_letters.append(msg)
