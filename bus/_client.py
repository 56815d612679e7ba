"""``SwarmClient``: submit work, follow it, cancel it, from any Python service.

Needs no agent runtime: it speaks the wire protocol through ``Bus`` only, and
reads who works on what from the workflow stored in the namespace.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta

import anyio
import nats.errors
import nats.js.errors
from nats.js import api
from opentelemetry.trace import SpanKind
from pydantic import JsonValue

from swarmbus.protocols import (
    DEFAULT_TIMEOUT_S,
    AgentAnnouncement,
    ArtifactRef,
    Cancel,
    CompiledWorkflow,
    ConfigError,
    Deadline,
    Message,
    Meta,
    Resume,
    SwarmbusError,
    TaskRequest,
    TaskResult,
    Work,
    WorkState,
    check_workflow_id,
    headers,
    initial_state,
    step_topic,
    subject,
    topics,
    workflow_filter,
)

from ._bus import Bus, StoredMessage
from ._codec import Envelope
from ._connect import NatsSettings
from ._objects import ArtifactStore
from ._publish import PayloadTooLargeError, SubjectTakenError
from ._settings import StreamSettings
from ._status import (
    DEADLINE_HEADER,
    WorkflowStatus,
    apply_event,
    cancel_flags,
    deadline_msg_id,
    live_agents,
    same_task,
    schedulable,
    serves,
)
from ._tracing import tracer
from ._workflows import UnknownWorkflowError, WorkflowStore

__all__ = [
    "RunNotRetryableError",
    "SwarmClient",
    "UnknownWorkflowIdError",
    "WorkflowIdTakenError",
]

class WorkflowIdTakenError(SwarmbusError, ValueError):
    """A *different* task was submitted under a workflow id already used."""


class UnknownWorkflowIdError(SwarmbusError, LookupError):
    """No workflow with this id in the namespace."""


class RunNotRetryableError(SwarmbusError, ValueError):
    """A run that did not end on a cause another attempt may not meet (``retry``)."""


class SwarmClient:
    """Connect with ``await SwarmClient.connect(url, namespace=...)``.

    ``submit`` publishes a ``TaskRequest`` (work waits in the stream until an
    agent takes it); ``result`` awaits the outcome, also when it was published
    before the call; ``events`` streams a workflow's history then its new
    messages; ``status`` says where it stands; ``cancel`` sets the flag checked
    before every model call. The client owns its bus and closes it in ``aclose``.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._workflows: WorkflowStore | None = None
        self._objects: ArtifactStore | None = None

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

    async def workflows(self) -> WorkflowStore:
        if self._workflows is None:
            self._workflows = await WorkflowStore.open(self.bus)
        return self._workflows

    async def _stored_workflows(self) -> WorkflowStore | None:
        """The workflow store if a daemon made it; a client never makes it."""
        if self._workflows is None:
            self._workflows = await WorkflowStore.find(self.bus)
        return self._workflows

    async def submit(self, task: TaskRequest | str, *, workflow_id: str | None = None) -> str:
        """Publish a task; returns its workflow id (random when not given).

        The id is single-use: submitting the same task again under it joins the
        existing workflow (nothing is published twice); a different task raises
        ``WorkflowIdTakenError``. An invalid id raises ``SubjectError``. A task
        naming a workflow the namespace does not hold (once a daemon has stored
        any), or inputs its workflow does not declare or lacks, raises
        ``UnknownWorkflowError`` / ``ConfigError`` before anything is published.
        """
        if isinstance(task, str):
            task = TaskRequest(goal=task)
        wf = check_workflow_id(workflow_id) if workflow_id is not None else uuid.uuid4().hex
        workflow = await self._check_against_workflow(task)
        if task.submitted_at is None:
            task = task.model_copy(update={"submitted_at": datetime.now(UTC)})
        size, limit = len(task.model_dump_json().encode()), self.bus.stream.max_msg_bytes // 2
        if size > limit:
            raise PayloadTooLargeError(
                f"the task is {size:,} bytes, above the limit of {limit:,} bytes for a task "
                "(half the stream's max_msg_bytes: every work message carries the task); "
                "put large inputs elsewhere and pass a reference")
        assert task.submitted_at is not None
        deadline = task.limits.deadline_from(
            task.submitted_at, workflow.spec.limits.timeout_s if workflow is not None else None)
        armed = self.bus.schedules and schedulable(deadline)
        # The stored workflow it follows; "default": the daemon's default, none stored yet.
        name = workflow.name if workflow is not None else task.workflow or "default"
        try:
            # The workflow's root span: every step's span descends from it (traceparent).
            with tracer().start_as_current_span(
                f"invoke_workflow {name}", kind=SpanKind.PRODUCER, attributes={
                    "gen_ai.operation.name": "invoke_workflow", "gen_ai.agent.name": name,
                    "messaging.system": "nats", "messaging.operation.type": "send",
                    "messaging.destination.name": subject(self.bus.namespace, wf, topics.TASK),
                    "messaging.message.id": f"task-{wf}", "swarmbus.workflow_id": wf}):
                await self.bus.publish(wf, topics.TASK, task,
                                       Meta(f"task-{wf}", sender="client"), first=True,
                                       headers={DEADLINE_HEADER: deadline.isoformat()}
                                       if armed else None)
        except SubjectTakenError:
            stored = await self.bus.last(wf, topics.TASK)
            env = stored.try_decode() if stored is not None else None
            if env is None or not isinstance(env.message, TaskRequest) or not same_task(
                env.message, task
            ):
                raise WorkflowIdTakenError(
                    f"workflow id {wf!r} is taken by another task in namespace "
                    f"{self.bus.namespace!r}; choose another id (or none for a random one)"
                ) from None
            return wf  # joined the running workflow: its deadline is armed already
        if armed:
            await self.bus.schedule(wf, topics.DEADLINE_TIMER, Deadline(at=deadline),
                                    Meta(deadline_msg_id(wf, deadline), sender="client"),
                                    at=deadline, target=topics.DEADLINE)
        return wf

    async def deadline(self, task: TaskRequest) -> datetime:
        """When a run of ``task`` must end: its own ``deadline``, else its submission
        (``submitted_at``, else now) plus its ``timeout_s``, else its workflow's, else
        ``DEFAULT_TIMEOUT_S``."""
        store = await self._stored_workflows()
        wf = await store.of_run(None, task.workflow) if store is not None else None
        return task.limits.deadline_from(task.submitted_at or datetime.now(UTC),
                                         wf.spec.limits.timeout_s if wf else None)

    async def _check_against_workflow(self, task: TaskRequest) -> CompiledWorkflow | None:
        """The stored workflow ``task`` will follow (None: none stored yet), after checking
        that it exists and that the task gives the inputs it declares."""
        store = await self._stored_workflows()
        if store is None:
            return None  # no daemon has run in the namespace yet: nothing to check against
        ref = await store.resolve(task.workflow)
        if ref is None:
            names = await store.names() if task.workflow is not None else {}
            if task.workflow is not None and names:
                raise UnknownWorkflowError(
                    f"workflow {task.workflow!r} is not stored in namespace "
                    f"{self.bus.namespace!r} (it holds {', '.join(sorted(names))}); start a "
                    "daemon with it (swarmbus up --workflow FILE) or name another")
            return None  # no daemon has stored its workflows yet: nothing to check against
        spec = await store.get(ref)
        if spec is None:
            return None
        declared = spec.spec.inputs
        unknown = sorted(set(task.inputs) - set(declared))
        missing = sorted(k for k, v in declared.items()
                         if v.default is None and k not in task.inputs)
        if unknown or missing:
            what = (f"has no input {', '.join(map(repr, unknown))}" if unknown
                    else f"needs the input {', '.join(map(repr, missing))}")
            raise ConfigError(f"workflow {spec.name!r} {what} (its inputs: "
                              f"{', '.join(declared) or 'none, beyond the goal'})")
        return spec

    async def events(self, workflow_id: str) -> AsyncGenerator[Envelope[Message], None]:
        """Every message of the workflow, oldest first, then new ones as they come.
        Undecodable messages are skipped. To stop early, close it (``contextlib.aclosing``),
        which ends its subscription."""
        async with contextlib.aclosing(self._stored(workflow_id)) as stored:
            async for message in stored:
                env = message.try_decode()
                if env is not None:
                    yield env

    async def _stored(
        self, workflow_id: str, *, after_seq: int = 0
    ) -> AsyncGenerator[StoredMessage, None]:
        """The workflow's messages after stream sequence ``after_seq``, then new ones."""
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if after_seq
            else api.DeliverPolicy.ALL,
            opt_start_seq=after_seq + 1 if after_seq else None)
        sub = await self.bus.js.subscribe(
            workflow_filter(self.bus.namespace, workflow_id),
            stream=self.bus.stream_name,
            ordered_consumer=True,
            config=config,
            idle_heartbeat=5.0,
        )
        try:
            async for msg in sub.messages:
                seq = msg.metadata.sequence.stream if msg.metadata.sequence else 0
                yield StoredMessage(seq, msg.subject, msg.data, dict(msg.headers or {}))
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(nats.errors.Error, OSError):
                    await sub.unsubscribe()

    async def result(self, workflow_id: str, *, timeout_s: float | None = None) -> TaskResult:
        """The workflow's result, waiting for it if needed (for a run resumed with
        ``retry``, the result after the resume). Raises ``TimeoutError``."""
        with anyio.fail_after(timeout_s):
            after = 0
            stored = await self.bus.last(workflow_id, topics.RESULT)
            env = stored.try_decode() if stored is not None else None
            if env is not None and isinstance(env.message, TaskResult):
                if not env.message.retryable:
                    return env.message  # only a retryable result can have been resumed
                resumed = await self.bus.last(workflow_id, topics.RESUME)
                after = resumed.seq if resumed is not None else 0
                if stored is not None and stored.seq > after:
                    return env.message
            async with contextlib.aclosing(self._stored(workflow_id, after_seq=after)) as new:
                async for message in new:
                    env = message.try_decode()
                    if env is not None and isinstance(env.message, TaskResult):
                        return env.message
        raise TimeoutError  # pragma: no cover - the loop only ends by returning

    async def retry(
        self, workflow_id: str, *, timeout_s: float | None = None, reason: str = ""
    ) -> Resume:
        """Resume a run that ended ``retryable`` (a provider outage outlasted its deadline,
        a step failed on every delivery) from its last completed step: that step runs
        again on the work it had, with the spend so far kept (the response cache serves
        calls already paid for) and a new deadline ``timeout_s`` seconds from now (by
        default as long as the run had at first). ``result`` then waits for the new
        result. Returns the ``Resume`` published. Raises ``UnknownWorkflowIdError`` (no
        such run, or it has not ended), ``RunNotRetryableError`` (it ended otherwise)."""
        ended = await self.bus.last(workflow_id, topics.RESULT)
        env = ended.try_decode() if ended is not None else None
        if ended is None or env is None or not isinstance(env.message, TaskResult):
            raise UnknownWorkflowIdError(f"workflow {workflow_id!r} in namespace "
                                         f"{self.bus.namespace!r} has no result to retry")
        result = env.message
        if not result.retryable:
            raise RunNotRetryableError(
                f"workflow {workflow_id!r} ended {result.status} ({result.reason[:200]}): "
                "only a run that ended on a cause another attempt may not meet (a provider "
                "outage past its deadline, a step that failed on every delivery) resumes")
        latest = await self._last_work(workflow_id, before=ended.seq)
        if latest is None:
            raise RunNotRetryableError(f"workflow {workflow_id!r} has no work to resume")
        work, topic, msg_id = latest
        state = work.state
        first = state.deadline and state.task.submitted_at
        length = timeout_s or ((state.deadline - state.task.submitted_at).total_seconds()
                               if first and state.deadline and state.task.submitted_at
                               else DEFAULT_TIMEOUT_S)
        deadline = datetime.now(UTC) + timedelta(seconds=length)
        # The work again, as it was, but for the spend so far (the result's) and the new
        # deadline; its own usage was counted already, so it carries none (the trail's
        # steps still add up to the total).
        # An item of a fan-out resumes as the fan-out itself: its step then runs again
        # every item that had not finished (and publishes the join if all had).
        resumed = work.model_copy(update={"usage": None, "item": None, "state":
                                          state.model_copy(update={
            "spend": dict(result.spend), "deadline": deadline, "resumed_after": ended.seq})})
        if self.bus.schedules and schedulable(deadline):
            await self.bus.schedule(workflow_id, topics.DEADLINE_TIMER, Deadline(at=deadline),
                                    Meta(deadline_msg_id(workflow_id, deadline),
                                         sender="client"),
                                    at=deadline, target=topics.DEADLINE)
        marker = Resume(after=ended.seq, step=topics.step_of_topic(topic) or "",
                        deadline=deadline, reason=reason)
        await self.bus.publish(workflow_id, topics.RESUME, marker, Meta(
            f"resume-{workflow_id}-{ended.seq}", sender="client", round=state.round,
            workflow=state.workflow or None))
        meta = Meta(f"resume-{ended.seq}-{msg_id}", sender="client", round=state.round,
                    workflow=state.workflow or None)
        await self.bus.publish(workflow_id, topic, resumed, meta)
        return marker

    async def _last_work(self, workflow_id: str, *, before: int) -> tuple[Work, str, str] | None:
        """The run's last work message before stream sequence ``before``, as ``Work`` (a
        task that never got further becomes the entry step's work), with its topic and
        message id."""
        history = await self.bus.history(workflow_id)
        store = await self._stored_workflows()
        if store is None:
            return None
        for stored in reversed([h for h in history if h.seq < before]):
            env = stored.try_decode()
            if env is None:
                continue
            msg_id = stored.headers.get(headers.MSG_ID) or f"{self.bus.stream_name}-{stored.seq}"
            if isinstance(env.message, Work):
                return env.message, env.topic, msg_id
            if isinstance(env.message, TaskRequest):
                task = env.message
                wf = await store.of_run(env.workflow, task.workflow)
                if wf is None:
                    return None
                stamped = datetime.fromisoformat(stored.time) if stored.time else None
                return Work(state=initial_state(task, wf, stamped)), step_topic(wf.entry.id), \
                    msg_id
        return None

    async def status(self, workflow_id: str) -> WorkflowStatus:
        """Where the workflow stands (from the stream, the stored workflow and the
        live agents; no agent is asked)."""
        history = await self.bus.history(workflow_id)
        st = WorkflowStatus(workflow_id, known=bool(history), steps=len(history))
        for stored in history:
            env = stored.try_decode()
            if env is not None:
                apply_event(st, env)
        await self.describe(st)
        return st

    async def describe(self, st: WorkflowStatus, *,
                       agents: list[AgentAnnouncement] | None = None) -> None:
        """Fill ``role``, ``live`` and ``stalled`` from the stored workflow, the live
        agents (``agents``, as ``live_agents`` read them; read now when None; one
        stalled on storage stalls every workflow: the store is shared) and the stream's
        own limit."""
        if st.result is not None or not st.last_topic:
            return
        if agents is None:
            agents = await live_agents(self.bus)
        st.stalled = next((a.stalled for a in agents if a.stalled), "")
        if not st.stalled and await self.bus.stream_full():
            st.stalled = "storage full"
        store = await self._stored_workflows()
        if store is None:
            return
        wf = await store.of_run(st.workflow, st.task_workflow)
        if wf is None:
            return
        st.workflow = wf.hash
        if st.last_topic == topics.TASK:  # no work yet: it waits at its entry step
            st.step = wf.entry.id
        st.role = wf.role_of_topic(st.last_topic) or ""
        if st.role:
            # Working means a live agent pulls from the consumer that holds this step's
            # work; an announcement of the role for another workflow does not count.
            durable = st.consumer = wf.consumer(st.role)
            st.live = serves(agents, st.role, durable) and await self._consumer_exists(durable)

    async def _consumer_exists(self, durable: str) -> bool:
        try:
            await self.bus.js.consumer_info(self.bus.stream_name, durable)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def trail(self, workflow_id: str) -> list[StoredMessage]:
        """The workflow's whole history as stored (the audit trail); empty if unknown."""
        return await self.bus.history(workflow_id)

    async def cancel(self, workflow_id: str, *, reason: str = "") -> TaskResult | None:
        """Stop this workflow: its cancel flag is set (an agent in the middle of a model
        call, a retry wait or a sandbox run aborts it within about a second and ends the
        run ``cancelled`` with the best attempt so far, handing nothing on), and a
        ``Cancel`` message has the supervisor end it when no agent holds its work.
        Returns None once asked; the run's result, sending nothing, when it had ended
        already. Raises ``UnknownWorkflowIdError`` when no task has this id."""
        check_workflow_id(workflow_id)
        if await self.bus.last(workflow_id, topics.TASK) is None:
            raise UnknownWorkflowIdError(
                f"no workflow {workflow_id!r} in namespace {self.bus.namespace!r}")
        ended = await self._ended(workflow_id)
        if ended is not None:
            return ended
        store = await cancel_flags(self.bus)
        await store.put(workflow_id, b"1")
        await self.bus.publish(workflow_id, topics.CANCEL, Cancel(reason=reason),
                               Meta(f"cancel-{workflow_id}", sender="client"))
        return None

    async def _ended(self, workflow_id: str) -> TaskResult | None:
        """The run's result if it has ended (a result no resume came after), else None."""
        stored = await self.bus.last(workflow_id, topics.RESULT)
        env = stored.try_decode() if stored is not None else None
        if stored is None or env is None or not isinstance(env.message, TaskResult):
            return None
        if env.message.retryable:
            resumed = await self.bus.last(workflow_id, topics.RESUME)
            if resumed is not None and resumed.seq > stored.seq:
                return None
        return env.message

    async def artifact(self, result: TaskResult | WorkState, name: str) -> JsonValue:
        """Artifact ``name`` of a result (or state) as JSON, read from the namespace's
        object store when it travels by reference. Raises ``KeyError`` when absent,
        ``ExternalError`` when the stored object is gone."""
        value = result.artifacts[name]
        ref = ArtifactRef.of(value)
        if ref is None:
            return value
        if self._objects is None:
            self._objects = await ArtifactStore.open(self.bus)
        loaded: JsonValue = json.loads(await self._objects.get(ref))
        return loaded

    async def agents(self) -> list[AgentAnnouncement]:
        """The live agents of the namespace."""
        return await live_agents(self.bus)

    async def aclose(self) -> None:
        await self.bus.aclose()

    async def __aenter__(self) -> SwarmClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


