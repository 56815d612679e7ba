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
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from swarmbus.bus import (
    EXPECT_FIRST,
    ArtifactStore,
    Bus,
    PayloadTooLargeError,
    Reject,
    Retry,
    same_task,
)
from swarmbus.protocols import (
    ArtifactRef,
    CompiledWorkflow,
    ConfigError,
    Finish,
    Provenance,
    StepSpec,
    TaskRequest,
    TaskStatus,
    Usage,
    Work,
    WorkState,
    route,
    step_topic,
)

from .._agent import Agent, Context, Route
from .._guards import Guards, LimitReached, end_workflow, result_from
from ..models import (
    CachedModel,
    Model,
    ModelConfig,
    ModelError,
    ModelSettings,
    ProviderAuthError,
    ProviderError,
    build_model,
    current_ledger,
)
from ._call import StepCall
from ._registry import Workflows
from ._state import missing_inputs, start_state, update_findings
from ._tools import Tool

__all__ = ["StepAgent", "StepCall"]

_CACHE_BUCKET = "responses"
INLINE_BYTES = 128 * 1024
"""Artifacts larger than this (as JSON) travel by reference (the object store)."""
MAX_ARTIFACT_BYTES = 16 * 1024 * 1024
"""Larger outputs end the workflow (``failed``, with the best attempt)."""


class StepAgent(Agent):
    """Serves one role: every step of that role, in any workflow a message names.

    ``model`` answers the role's steps that name no model of their own; a step's
    own ``model`` is built with ``build`` (default ``build_model``) the first time
    it runs. ``tools`` maps tool names to tools (``sandbox.pytest``).
    ``cache_ttl_s`` turns on the response cache (a key-value bucket; a
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
        self._step_models: dict[str, Model] = {}
        self._cache_store: Any = None
        self._objects: ArtifactStore | None = None
        kwargs.setdefault("name", role)
        super().__init__(**kwargs)
        for step_id in workflows.default.roles.get(role, []):  # a bad model fails at start
            self.model_for(workflows.default.steps[step_id])

    @property
    def model_name(self) -> str:
        return self.model.name if self.model is not None else ""

    def routes(self) -> dict[str, Route]:
        topics = self.workflows.default.topics(self.role)
        if not topics:
            raise ConfigError(f"role {self.role!r} serves no step of workflow "
                              f"{self.workflows.default.name!r}")
        out = {t: Route(Work, self.on_work) for t in topics if t != "task"}
        if "task" in topics:
            out["task"] = Route(TaskRequest, self.on_task)
        return out

    async def setup(self, bus: Bus) -> None:
        await super().setup(bus)
        await self.guards.setup(bus, self)
        await self.workflows.setup(bus)
        self._objects = await ArtifactStore.open(bus)
        if self.cache_ttl_s is not None:
            self._cache_store = await bus.key_value(_CACHE_BUCKET, ttl_s=self.cache_ttl_s)
            if self.model is not None and not isinstance(self.model, CachedModel):
                self.model = CachedModel(self.model, self._cache_store, ttl_s=self.cache_ttl_s)
            for key, model in self._step_models.items():
                if not isinstance(model, CachedModel):
                    self._step_models[key] = CachedModel(model, self._cache_store,
                                                         ttl_s=self.cache_ttl_s)

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
            model = self.build(step.model)  # type: ignore[arg-type]
            if self._cache_store is not None:
                model = CachedModel(model, self._cache_store, ttl_s=self.cache_ttl_s)
            self._step_models[key] = model
        return model

    # -- handlers ---------------------------------------------------------------------------

    async def on_task(self, task: TaskRequest, ctx: Context[TaskRequest]) -> None:
        wf = await self.workflows.for_task(task, ctx.envelope.workflow)
        if wf.entry.role != self.role:
            return  # another workflow's kick-off: its own entry role takes it
        if not await self._first_task(task, ctx):
            return
        state = start_state(task, wf, ctx)
        await self.guards.run(ctx, state, lambda: self._run(ctx, wf, wf.entry, state, task))

    async def on_work(self, work: Work, ctx: Context[Work]) -> None:
        wf = await self.workflows.get(work.state.workflow or ctx.envelope.workflow)
        step = wf.steps.get(ctx.envelope.topic[len("step."):])
        if step is None or step.role != self.role:
            raise Reject(f"workflow {wf.label} has no step {ctx.envelope.topic!r} "
                         f"for role {self.role!r}")
        await self.guards.run(ctx, work.state, lambda: self._run(ctx, wf, step, work.state))

    async def _first_task(self, task: TaskRequest, ctx: Context[TaskRequest]) -> bool:
        """Workflow ids are single-use: a later, different task under a used id is
        dead-lettered (the first run goes on untouched); the same task is a no-op.
        A task published with ``Nats-Expected-Last-Subject-Sequence: 0`` (as
        ``SwarmClient.submit`` does) is first by the server's own check."""
        if ctx.envelope.headers.get(EXPECT_FIRST) == "0":
            return True
        first = await ctx.bus.first(ctx.workflow_id, "task")
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
        missing = [n for n in step.input if n not in state.artifacts]
        if missing or (task is not None and missing_inputs(task, wf)):
            why = (f"step {step.id!r} is missing its inputs {missing}" if missing else
                   f"the task lacks inputs {missing_inputs(task, wf)} that workflow "
                   f"{wf.name!r} requires (TaskRequest.inputs)" if task else "")
            await self._end(ctx, wf, state, "failed", why, step, None, Usage())
            return
        output_type = wf.types[step.output] if step.output else _NoOutput
        call = StepCall(
            workflow=wf, step=step, state=state,
            inputs={n: await self._artifact(state, n, wf.types[n]) for n in step.input},
            previous=(await self._artifact(state, step.output, output_type)
                      if step.output and step.output in state.artifacts else None),
            output_type=output_type, model=self.model_for(step), settings=self.settings,
            ctx=ctx,
        )
        tools = [self.tools[t] for t in step.tools if t in self.tools]
        ledger = current_ledger()
        try:
            for tool in tools:
                await tool.before(call)
            output = await self.perform(call)
            for tool in tools:
                output = tool.after(call, output)
        except LimitReached:
            raise
        except (ModelError, ConfigError) as e:
            await self._model_failed(ctx, wf, step, call, e)
            return
        usage = ledger.take() if ledger is not None else Usage()
        state.spend[self.role] = state.spend.get(self.role, Usage()) + usage
        state.steps += 1
        previous_value = state.artifacts.get(step.output or "")
        if step.output:
            try:
                state.artifacts[step.output] = await self._store(output)
            except _TooLarge as e:
                await self._end(ctx, wf, state, "failed", f"step {step.id!r}: {e}", step,
                                call.provenance, usage)
                return
        update_findings(state, step, output)
        prov = call.provenance
        decision = route(wf, step.id, output, state.edges, state.caps)
        if isinstance(decision, Finish):
            _answered(ctx, step, prov, decision.status)
            await self._end(ctx, wf, state, decision.status, decision.reason, step, prov, usage)
            return
        if not decision.edge.endswith(".next"):  # every route taken counts; caps use them
            state.edges[decision.edge] = state.edges.get(decision.edge, 0) + 1
        if decision.capped:
            state.round += 1
        work = Work(state=state, source=step.id, output=step.output or "", edge=decision.edge,
                    provenance=prov, usage=usage)
        try:
            await ctx.publish(work, topic=step_topic(decision.step), round=state.round,
                              model=prov.name if prov else None, workflow=wf.hash)
        except PayloadTooLargeError as e:
            if step.output:  # the best attempt is what came before this output
                if previous_value is None:
                    state.artifacts.pop(step.output, None)
                else:
                    state.artifacts[step.output] = previous_value
            await self._end(ctx, wf, state, "failed",
                            f"step {step.id!r}: its output cannot be passed on: {e}",
                            step, prov, Usage())
        finally:  # logged once the next step has its work: a log line is not on its path
            _answered(ctx, step, prov, decision.step)

    async def _artifact(self, state: WorkState, name: str, type_: type[BaseModel]) -> BaseModel:
        """Artifact ``name`` as ``type_``, read from the object store when by reference."""
        value = state.artifacts[name]
        ref = ArtifactRef.of(value)
        if ref is None:
            return type_.model_validate(value)
        assert self._objects is not None
        return type_.model_validate_json(await self._objects.get(ref))

    async def _store(self, output: BaseModel) -> Any:
        """The output as it goes in the state: inline, or by reference when large.
        Raises ``_TooLarge`` above ``max_artifact_bytes``."""
        data = output.model_dump_json().encode()
        if len(data) > self.max_artifact_bytes:
            raise _TooLarge(f"its {type(output).__name__} output is {len(data):,} bytes, "
                            f"above the limit of {self.max_artifact_bytes:,} bytes")
        if len(data) <= self.inline_bytes or self._objects is None:
            return output.model_dump(mode="json")
        return (await self._objects.put(data)).as_value()

    async def _model_failed(
        self, ctx: Context[Any], wf: CompiledWorkflow, step: StepSpec, call: StepCall,
        e: ModelError | ConfigError,
    ) -> None:
        """Transient: retry later (after the provider's Retry-After), within deadline and
        deliveries. Permanent: end the workflow now, with the best attempt."""
        state = call.state
        name = call.model.name if call.model is not None else "no model"
        what = f"step {step.id!r} ({self.role}, {name}): {e}"
        if not _permanent(e):
            delay = max(self.consumer.retry_delay(ctx.deliveries),
                        float(getattr(e, "retry_after_s", None) or 0.0))
            now = datetime.now(UTC)
            if state.deadline is not None and now + timedelta(seconds=delay) >= state.deadline:
                ledger = current_ledger()
                usage = ledger.take() if ledger is not None else Usage()
                state.spend[self.role] = state.spend.get(self.role, Usage()) + usage
                await self._end(ctx, wf, state, "deadline_exceeded",
                                f"deadline passes before the provider can be retried: {what}",
                                step, None, usage,
                                model=call.model.name if call.model is not None else None)
                return
            if ctx.deliveries < self.consumer.max_deliver - 1:
                ctx.log.warning("model failed, will retry", step=step.id, model=name,
                                error=str(e)[:500], delay_s=round(delay, 3),
                                delivery=ctx.deliveries)
                raise Retry(what, delay_s=delay)
            what = f"model unavailable after {ctx.deliveries} deliveries: {what}"
        ledger = current_ledger()
        usage = ledger.take() if ledger is not None else Usage()
        state.spend[self.role] = state.spend.get(self.role, Usage()) + usage
        ctx.log.warning("step failed for good", step=step.id, model=name, error=str(e)[:500])
        await self._end(ctx, wf, state, "failed", what, step, None, usage,
                        model=call.model.name if call.model is not None else None)

    async def _end(
        self, ctx: Context[Any], wf: CompiledWorkflow, state: WorkState, status: TaskStatus,
        reason: str, step: StepSpec, prov: Provenance | None, usage: Usage,
        model: str | None = None,
    ) -> None:
        result = result_from(state, status, reason, workflow=wf.hash, step=step.id,
                             provenance=prov, usage=usage)
        await end_workflow(ctx, result, model=model)
        self.guards.mark_ended(ctx.workflow_id)


def _answered(ctx: Context[Any], step: StepSpec, prov: Provenance | None, then: str) -> None:
    if prov is not None:
        ctx.log.info("model answered", step=step.id, model=prov.name, cost_usd=prov.cost_usd,
                     latency_s=round(prov.latency_s, 3), from_cache=prov.from_cache, then=then)


class _TooLarge(Exception):
    pass


class _NoOutput(BaseModel):
    """The output of a step that declares none (its model answers anything)."""

    summary: str = ""


def _permanent(e: ModelError | ConfigError) -> bool:
    flag = getattr(e, "permanent", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(e, ConfigError | ProviderAuthError) or not isinstance(e, ProviderError)
