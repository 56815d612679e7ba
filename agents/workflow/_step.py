"""The generic step runtime: one agent per role runs that role's steps of any workflow.

A message on ``step.<id>`` (or the kick-off on ``task``, for the role of the
first step) is handled the same way whatever the team: load the workflow the
message names, check the limits, gather the step's typed inputs, run its tools,
ask its model (under a ``Ledger``: every call booked, limits checked before
each), let the tools correct the answer, route it with the one pure routing
function, and publish either the next step's work or the workflow's only result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

import anyio
import structlog
from pydantic import BaseModel, TypeAdapter, ValidationError

from swarmbus.bus import (
    DEADLINE_HEADER,
    EXPECT_FIRST,
    ArtifactStore,
    Bus,
    PayloadTooLargeError,
    Reject,
    Retry,
    deadline_msg_id,
    same_task,
    schedulable,
)
from swarmbus.protocols import (
    ArtifactRef,
    Code,
    CompiledWorkflow,
    ConfigError,
    Deadline,
    Finish,
    Meta,
    Provenance,
    StepSpec,
    SwarmbusError,
    TaskRequest,
    Work,
    WorkState,
    code_diff,
    route,
    step_topic,
    topics,
)

from .._agent import Agent, Context, Route
from .._guards import Guards
from .._run import Run, spill
from ..models import (
    CachedModel,
    LimitReached,
    Model,
    ModelConfig,
    ModelError,
    ModelSettings,
    RoutedModel,
    build_model,
)
from ._call import StepCall, permanent
from ._fanout import Fanouts
from ._items import ItemSteps, TooLargeError, answered
from ._prompt import PromptError, template_paths
from ._registry import Workflows
from ._routing import Routes
from ._state import missing_inputs, start_state, update_findings
from ._tools import Tool

__all__ = ["StepAgent", "StepCall"]

log = structlog.get_logger("swarmbus.workflow")

_CACHE_BUCKET = "responses"
MODEL_CONFIG: TypeAdapter[ModelConfig] = TypeAdapter(ModelConfig)
INLINE_BYTES = 128 * 1024
"""Artifacts larger than this (as JSON) travel by reference (the object store)."""
MAX_ARTIFACT_BYTES = 16 * 1024 * 1024
"""Larger outputs end the workflow (``failed``, with the best attempt)."""
MAX_DIFF_CHARS = 32 * 1024
"""A revision's diff kept in the state (it travels on every later message) is cut here."""


class StepAgent(Agent):
    """Serves one role: every step of that role, in any workflow a message names.

    ``model`` answers the role's steps that name no model of their own; a step's
    own ``model`` is built with ``build`` (default ``build_model``) the first time
    it runs. ``tools`` maps tool names to tools (``sandbox.pytest``).
    ``revise``: how the role's steps revise their own code when the workflow does not
    say (``StepSpec.revise``). ``cache_ttl_s`` turns on the response cache (a key-value bucket; a
    redelivered message does not pay twice), scoped to the workflow unless
    ``share_cache``. Override ``perform`` to serve a step with your own code.
    The role's consumer starts at the oldest work it has not answered, not at "now".
    """

    start = "pending"

    def __init__(
        self,
        role: str,
        *,
        workflows: Workflows,
        model: Model | None = None,
        build: Callable[[ModelConfig], Model] | None = None,
        tools: Mapping[str, Tool] | None = None,
        settings: ModelSettings | None = None,
        cache_ttl_s: float | None = None,
        share_cache: bool = False,
        guards: Guards | None = None,
        inline_bytes: int = INLINE_BYTES,
        max_artifact_bytes: int = MAX_ARTIFACT_BYTES,
        revise: Literal["edits", "whole"] = "edits",
        **kwargs: Any,
    ) -> None:
        self.role = role
        self.workflows = workflows
        self.model = model
        self.build = build or build_model
        self.tools = dict(tools or {})
        self.settings = settings or ModelSettings()
        self.cache_ttl_s = cache_ttl_s
        self.guards = guards or Guards(share_cache=share_cache)
        self.inline_bytes = inline_bytes
        self.max_artifact_bytes = max_artifact_bytes
        self.revise = revise
        self._step_models: dict[str, Model] = {}
        self._cache_store: Any = None
        self._objects: ArtifactStore | None = None
        self.fanouts = Fanouts()
        self.routers = Routes()
        self.items = ItemSteps(self)
        if kwargs.setdefault("name", role) != role:
            raise ConfigError(f"a step agent's name is its role ({role!r}): its consumer, its "
                              f"spend and the supervisor know it by that, got {kwargs['name']!r}")
        super().__init__(**kwargs)
        for step_id in workflows.default.roles.get(role, []):  # a bad model fails at start
            self.model_for(workflows.default.steps[step_id])

    @property
    def model_name(self) -> str:
        """The role's model and its steps' own, as announced (``swarmbus agents``)."""
        names = [m.name for m in (self.model, *self._step_models.values()) if m is not None]
        return ", ".join(dict.fromkeys(names))

    @property
    def durable(self) -> str:
        return self.workflows.default.consumer(self.role)

    @property
    def workflow_name(self) -> str:
        return self.workflows.default.name

    def route_for(self, topic: str) -> Route | None:
        """Every ``step.*`` topic is the work of some version of a workflow: ``on_work``
        reads which (a version stored after this process started included)."""
        found = self._routes.get(topic)
        if found is None and topics.step_of_topic(topic) is not None:
            return Route(Work, self.on_work)
        return found

    def routes(self) -> dict[str, Route]:
        served = self.workflows.default.topics(self.role)
        if not served:
            raise ConfigError(f"role {self.role!r} serves no step of workflow "
                              f"{self.workflows.default.name!r}")
        out = {t: Route(Work, self.on_work) for t in served if t != topics.TASK}
        if topics.TASK in served:
            out[topics.TASK] = Route(TaskRequest, self.on_task)
        return out

    async def setup(self, bus: Bus) -> None:
        await super().setup(bus)
        await self.guards.setup(bus, self)
        await self.workflows.setup(bus)
        # The consumer takes this role's steps of every stored version of the workflow: a
        # run started on an older graph finishes by it, also after a step was renamed.
        served = [t for wf in self.workflows.versions for t in wf.topics(self.role)]
        for topic in dict.fromkeys(served):
            if topic not in self._routes:
                self._routes[topic] = Route(Work, self.on_work)
        await self._warn_legacy_consumer(bus)
        self._objects = await ArtifactStore.open(bus)
        await self.fanouts.setup(bus)
        await self.routers.setup(bus)
        if self.cache_ttl_s is not None:
            self._cache_store = await bus.key_value(_CACHE_BUCKET, ttl_s=self.cache_ttl_s)
            if self.model is not None:
                self.model = self._cached(self.model)
            for key, model in self._step_models.items():
                self._step_models[key] = self._cached(model)

    def _cached(self, model: Model) -> Model:
        """``model`` behind the response cache (a routed one: each candidate, keyed by its
        own name); as it is when it is already, or when there is no cache."""
        if self._cache_store is None or isinstance(model, CachedModel):
            return model
        if isinstance(model, RoutedModel):
            model.wrap(self._cached)
            return model
        return CachedModel(model, self._cache_store, ttl_s=self.cache_ttl_s)

    async def aclose(self) -> None:
        await self.guards.aclose()
        for m in [self.model, *self._step_models.values()]:
            if m is not None:
                await m.aclose()
        await super().aclose()

    def model_for(self, step: StepSpec) -> Model | None:
        """The model of ``step``: its own (built once), else the role's."""
        if step.model is None:
            return self.model
        key = json.dumps(step.model, sort_keys=True)
        model = self._step_models.get(key)
        if model is None:
            # A step's model is JSON in the file: a name, a spec or a fallback chain.
            model = self._cached(self.build(MODEL_CONFIG.validate_python(step.model)))
            self._step_models[key] = model
        return model

    # -- handlers ---------------------------------------------------------------------------

    async def on_task(self, task: TaskRequest, ctx: Context[TaskRequest]) -> None:
        found = await self.workflows.for_task(task, ctx.envelope.workflow)
        if not self.workflows.serves(found) or found.entry.role != self.role:
            return  # another workflow's kick-off: the consumer of its entry role has it too
        wf = await self.workflows.get(found.hash)
        if not await self._first_task(task, ctx):
            return
        state = start_state(task, wf, ctx)
        await arm_deadline(ctx, state, wf.hash)
        await self.guards.run(ctx, state, lambda: self._run(ctx, wf, wf.entry, state, task))

    async def on_work(self, work: Work, ctx: Context[Work]) -> None:
        ref = work.state.workflow or ctx.envelope.workflow
        found = await self.workflows.graph(ref) if ref else self.workflows.default
        if found is None:
            raise Reject(f"workflow {ref!r} is not stored in this namespace")
        if not self.workflows.serves(found):
            return  # another workflow's step of the same name: its own consumer has it too
        wf = await self.workflows.get(found.hash)
        step = wf.steps.get(topics.step_of_topic(ctx.envelope.topic) or "")
        if step is None or step.role != self.role:
            raise Reject(f"workflow {wf.label} has no step {ctx.envelope.topic!r} "
                         f"for role {self.role!r}")
        if work.item is not None:
            if step.for_each is None:
                raise Reject(f"an item of a fan-out on step {step.id!r}, which has no for_each")
            await self.guards.run(ctx, work.state, lambda: self.items.run_item(ctx, wf, step, work))
            return
        if step.for_each is not None:  # the fan-out itself, again: a resumed run's
            await self.guards.run(ctx, work.state, lambda: self.items.resume(ctx, wf, step, work))
            return
        await self.guards.run(ctx, work.state, lambda: self._run(ctx, wf, step, work.state))

    async def _warn_legacy_consumer(self, bus: Bus) -> None:
        """Versions before 0.2 pulled a role's work from a consumer named after the role
        alone; one left behind takes a copy of the same work."""
        try:
            info = await bus.js.consumer_info(bus.stream_name, self.role)
        except Exception:
            return
        log.warning("a consumer of an earlier version takes this role's work too: once no "
                    "daemon of that version runs, delete it (nats consumer rm "
                    f"{bus.stream_name} {self.role})", consumer=self.role,
                    now=self.durable, filters=info.config.filter_subjects or [
                        info.config.filter_subject])

    async def _first_task(self, task: TaskRequest, ctx: Context[TaskRequest]) -> bool:
        """Workflow ids are single-use: a later, different task under a used id is
        dead-lettered (the first run goes on untouched); the same task is a no-op.
        A task published with ``Nats-Expected-Last-Subject-Sequence: 0`` (as
        ``SwarmClient.submit`` does) is first by the server's own check."""
        if ctx.envelope.headers.get(EXPECT_FIRST) == "0":
            return True
        first = await ctx.bus.first(ctx.workflow_id, topics.TASK)
        mine = ctx.delivery.stream_seq
        if first is None or not mine or first.seq == mine:
            return True
        earlier = first.try_decode()
        if earlier is not None and isinstance(earlier.message, TaskRequest) and same_task(
            earlier.message, task
        ):
            ctx.log.info("same task submitted again under its id; already running")
            return False
        raise Reject(f"workflow id {ctx.workflow_id!r} is taken by an earlier, different task "
                     f"(stream sequence {first.seq}); submit under another id",
                     reason="id_taken")

    # -- one step ---------------------------------------------------------------------------

    async def perform(self, call: StepCall) -> BaseModel:
        """Produce the step's output: by default, ask its model. Override to serve a
        step with your own code (bind it with ``agent: pkg.module:Class``)."""
        return await call.ask()

    async def _run(
        self, ctx: Context[Any], wf: CompiledWorkflow, step: StepSpec, state: WorkState,
        task: TaskRequest | None = None,
    ) -> None:
        run = ctx.run
        assert run is not None  # Guards.run made it
        run.step = step.id
        why = self._cannot_start(ctx, wf, step, state, task)
        if why:
            await run.end("failed", why)
            return
        output_type = wf.types[step.output] if step.output else _NoOutput
        call = StepCall(
            workflow=wf, step=step, state=state,
            inputs={n: await self._artifact(state, n, wf.read_types[n]) for n in step.input},
            previous=(await self._artifact(state, step.output, wf.read_types[step.output])
                      if step.output and step.output in state.artifacts else None),
            output_type=output_type, model=self.model_for(step), settings=self.settings,
            ctx=ctx, artifacts=await self._readable(state, step),
            retry_delay=self.consumer.retry_delay, revise=self.revise, routes=self.routers,
        )
        tools = [self.tools[t] for t in step.tool_names if t in self.tools]
        try:
            for tool in tools:
                await tool.before(call)
            output = await self.perform(call)
            for tool in tools:
                output = tool.after(call, output)
        except LimitReached:
            raise
        except (ModelError, ConfigError, PromptError, ValidationError) as e:
            await self._failed(ctx, run, step, call, e)
            return
        run.take_spend()
        usage = run.spent_here  # what this delivery spent, whoever took it into the state
        state.steps += 1
        prov = call.provenance
        if step.output and isinstance(output, Code) and isinstance(call.previous, Code):
            state.diffs[step.output] = code_diff(call.previous, output, max_chars=MAX_DIFF_CHARS)
        if step.output:
            try:
                state.artifacts[step.output] = await self._store(output)
            except TooLargeError as e:
                await run.end("failed", f"step {step.id!r}: {e}", provenance=prov)
                return
        update_findings(state, step, output)
        decision = route(wf, step.id, output, state.edges, state.caps,
                         send_backs=state.send_backs, send_back_caps=state.send_back_caps)
        if isinstance(decision, Finish):
            answered(ctx, step, prov, decision.status)
            await run.end(decision.status, decision.reason, provenance=prov)
            return
        if not decision.edge.endswith(".next"):  # every route taken counts; caps use them
            state.edges[decision.edge] = state.edges.get(decision.edge, 0) + 1
        if decision.sent_back_to is not None:
            role = decision.sent_back_to
            state.send_backs[role] = state.send_backs.get(role, 0) + 1
        if decision.capped:
            state.round += 1
        run.check()  # cancelled, or past the deadline: nothing is handed on
        work = Work(state=state, source=step.id, output=step.output or "", edge=decision.edge,
                    provenance=prov, usage=usage)
        try:
            with anyio.CancelScope(shield=True):  # a publish is not cut half-way
                if wf.steps[decision.step].for_each is not None:
                    await self.items.fan_out(ctx, run, wf, wf.steps[decision.step], work, prov)
                else:
                    await self._hand_on(ctx, wf, work, decision.step, prov)
        except PayloadTooLargeError as e:
            await run.end("failed", f"step {step.id!r}: its output cannot be passed on: {e}",
                          provenance=prov)
        finally:  # logged once the next step has its work: a log line is not on its path
            answered(ctx, step, prov, decision.step)

    def _cannot_start(self, ctx: Context[Any], wf: CompiledWorkflow, step: StepSpec,
                      state: WorkState, task: TaskRequest | None) -> str:
        """Why the step cannot run at all (a deterministic fault: the run fails at once)."""
        missing = [n for n in step.input if n not in state.artifacts]
        if missing:
            return f"step {step.id!r} is missing its inputs {missing}"
        if task is not None:
            lacking = missing_inputs(task, wf)
            if lacking:
                return (f"the task lacks inputs {lacking} that workflow {wf.name!r} requires "
                        "(TaskRequest.inputs)")
            size, limit = len(task.model_dump_json().encode()), max_task_bytes(ctx.bus)
            if size > limit:
                return (f"the task is {size:,} bytes, above the limit of {limit:,} bytes for a "
                        "task (half the stream's max_msg_bytes: every work message carries it)")
        return ""

    async def _hand_on(self, ctx: Context[Any], wf: CompiledWorkflow, work: Work, to: str,
                       prov: Provenance | None, msg_id: str | None = None) -> None:
        """Publish ``work`` for step ``to`` (under ``msg_id`` when given); too large, its
        larger artifacts move to the object store first (the state grows with every
        step) and it is tried again."""
        for attempt in (1, 2):
            try:
                await ctx.publish(work, topic=step_topic(to), round=work.state.round,
                                  model=prov.name if prov else None, workflow=wf.hash,
                                  msg_id=msg_id)
                return
            except PayloadTooLargeError:
                if attempt == 2 or self._objects is None or not await spill(
                        work.state, self._objects):
                    raise

    async def _artifact(self, state: WorkState, name: str, type_: type[BaseModel]) -> BaseModel:
        """Artifact ``name`` as ``type_``, read from the object store when by reference."""
        value = state.artifacts[name]
        ref = ArtifactRef.of(value)
        if ref is None:
            return type_.model_validate(value)
        assert self._objects is not None
        return type_.model_validate_json(await self._objects.get(ref))

    async def _readable(self, state: WorkState, step: StepSpec) -> dict[str, Any] | None:
        """Every artifact as the step's templates see it: by-reference ones that its
        templates read are fetched (None: nothing to fetch, use the state's)."""
        wanted = {path[1] for text in (step.task, step.system or "") if "{" in text
                  for path in template_paths(text) if path[0] == "artifacts" and len(path) > 1}
        refs = {n: r for n in wanted if n in state.artifacts
                and (r := ArtifactRef.of(state.artifacts[n])) is not None}
        if not refs:
            return None
        assert self._objects is not None
        out = dict(state.artifacts)
        for name, ref in refs.items():
            out[name] = json.loads(await self._objects.get(ref))
        return out

    async def _store(self, output: BaseModel) -> Any:
        """The output as it goes in the state: inline, or by reference when large.
        Raises ``TooLargeError`` above ``max_artifact_bytes``."""
        data = output.model_dump_json().encode()
        if len(data) > self.max_artifact_bytes:
            raise TooLargeError(f"its {type(output).__name__} output is {len(data):,} bytes, "
                            f"above the limit of {self.max_artifact_bytes:,} bytes")
        if len(data) <= self.inline_bytes or self._objects is None:
            return output.model_dump(mode="json")
        return (await self._objects.put(data)).as_value()

    async def _failed(
        self, ctx: Context[Any], run: Run, step: StepSpec, call: StepCall, e: Exception,
    ) -> None:
        """A permanent fault ends the run now, with the best attempt; a transient one
        that reached here (a custom ``perform``'s) is retried later, within deliveries."""
        name = call.decision.model if call.decision is not None else (
            call.model.name if call.model is not None else None)  # a routed step: its pick
        what = f"step {step.id!r} ({self.role}, {name or 'no model'}): {e}"
        transient = not permanent(e)
        if transient:
            delay = max(self.consumer.retry_delay(ctx.deliveries),
                        float(getattr(e, "retry_after_s", None) or 0.0))
            if ctx.deliveries < self.consumer.max_deliver - 1:
                ctx.log.warning("step failed, will retry", step=step.id, model=name,
                                error=str(e)[:500], delay_s=round(delay, 3),
                                delivery=ctx.deliveries)
                raise Retry(what, delay_s=delay)
            what = f"still failing after {ctx.deliveries} deliveries: {what}"
        ctx.log.warning("step failed for good", step=step.id, model=name, error=str(e)[:500])
        await run.end("failed", what, model=name, retryable=transient)


def max_task_bytes(bus: Bus) -> int:
    """The largest task a run takes (bytes of JSON): half the stream's message limit,
    since every work message carries the task beside the rest of the state."""
    return bus.stream.max_msg_bytes // 2


async def arm_deadline(ctx: Context[Any], state: WorkState, workflow: str) -> None:
    """Schedule the run's ``Deadline`` message (unless the submitter armed the same one),
    so the run ends at its deadline even if no agent ever takes its next step."""
    deadline = state.deadline
    if deadline is None or not ctx.bus.schedules or not schedulable(deadline):
        return
    if ctx.envelope.headers.get(DEADLINE_HEADER) == deadline.isoformat():
        return
    try:
        meta = Meta(deadline_msg_id(ctx.workflow_id, deadline), sender=ctx.agent,
                    workflow=workflow)
        # Not awaiting the ack keeps it off the first step's path; the task was stored
        # a moment ago, so the store takes it (and this agent bounds the step itself).
        await ctx.bus.schedule(ctx.workflow_id, topics.DEADLINE_TIMER, Deadline(at=deadline),
                               meta, at=deadline, target=topics.DEADLINE, confirm=False)
    except SwarmbusError as e:  # the run goes on; agents still cut it at the deadline
        ctx.log.warning("could not schedule the deadline", error=str(e)[:300])


class _NoOutput(BaseModel):
    """The output of a step that declares none (its model answers anything)."""

    summary: str = ""
