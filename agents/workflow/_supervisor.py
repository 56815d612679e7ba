"""The supervisor: ends a workflow whose work was dead-lettered by the role serving it.

Dead-lettering only dead-letters (the bus knows no workflow). Every daemon runs
this small agent on ``deadletter``: when the agent that gave up is the role the
stored workflow assigns to that topic (a custom agent giving up ends nothing),
it publishes the workflow's ``failed`` result with the reason, the best
attempt found in the dead-lettered message, and any spend that message's
failed deliveries carried, so a waiting client is never left hanging.
"""

from __future__ import annotations

from typing import Any

from swarmbus.bus import Bus, WorkflowStore
from swarmbus.protocols import (
    DeadLetter,
    Subject,
    SubjectError,
    TaskRequest,
    Usage,
    Work,
    WorkState,
    headers,
)

from .._agent import Agent, Context, handles
from .._guards import carried_spend, end_workflow, result_from

__all__ = ["Supervisor"]


class Supervisor(Agent):
    """Turns a dead-lettered step (or task) into the workflow's ``failed`` result."""

    name = "supervisor"
    start = "pending"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store: WorkflowStore | None = None
        self._bus: Bus | None = None

    async def setup(self, bus: Bus) -> None:
        await super().setup(bus)
        self._bus = bus
        self._store = await WorkflowStore.open(bus)

    @handles("deadletter")
    async def on_dead_letter(self, letter: DeadLetter, ctx: Context[DeadLetter]) -> None:
        if letter.reason == "id_taken":
            return  # the first workflow under that id goes on
        try:
            topic = Subject.parse(letter.subject).topic
        except SubjectError:
            return
        if topic != "task" and not topic.startswith("step."):
            return
        assert self._store is not None and self._bus is not None
        ref = letter.headers.get(headers.WORKFLOW) or await self._store.resolve(None)
        wf = await self._store.get(ref) if ref else None
        role = wf.role_of_topic(topic) if wf is not None else None
        if role is None and topic != "task":
            return  # not a step of a workflow we know
        if role is not None and letter.agent != role:
            return  # a custom agent gave up on its copy: the workflow goes on
        state = await self._state(letter)
        carried = await self._carried(letter)
        if carried is not None:
            state.spend[letter.agent] = state.spend.get(letter.agent, Usage()) + carried
        reason = (f"{letter.agent or 'an agent'} gave up on {topic} ({letter.reason}): "
                  f"{letter.error}")
        await end_workflow(ctx, result_from(state, "failed", reason[:4000],
                                            workflow=wf.hash if wf else "", usage=carried))

    async def _state(self, letter: DeadLetter) -> WorkState:
        """The best attempt: the dead-lettered message's own state, when it decodes."""
        assert self._bus is not None
        stored = await self._bus.get(letter.stream_seq) if letter.stream_seq else None
        env = stored.try_decode() if stored is not None else None
        if env is not None and isinstance(env.message, Work):
            return env.message.state
        if env is not None and isinstance(env.message, TaskRequest):
            return WorkState(task=env.message)
        return WorkState(task=TaskRequest(goal="(the task could not be read)"))

    async def _carried(self, letter: DeadLetter) -> Usage | None:
        assert self._bus is not None
        msg_id = letter.headers.get(headers.MSG_ID) or (
            f"{self._bus.stream_name}-{letter.stream_seq}" if letter.stream_seq else "")
        if not msg_id or not letter.agent:
            return None
        return await carried_spend(self._bus, letter.agent, msg_id)
