"""The fan-out side of the step runtime: a ``for_each`` step's start, each item's run
and completion, and a resumed run's fan-out (the join itself is an ordinary step).
``Fanouts`` does the key-value and publishing part; this runs the step."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ValidationError

from swarmbus.bus import Retry, scrub
from swarmbus.protocols import (
    CompiledWorkflow,
    ConfigError,
    ControlFlow,
    FanoutPlan,
    ItemResult,
    Provenance,
    StepSpec,
    TaskStatus,
    Usage,
    Work,
    WorkItem,
    WorkState,
)

from .._agent import Context
from .._run import Run
from ..models import LimitReached, ModelError
from ._call import StepCall, permanent
from ._fanout import DEFAULT_SEND_BACKS, Fail, Fanouts, Publish, affected
from ._prompt import PromptError

if TYPE_CHECKING:
    from ._step import StepAgent

__all__ = ["ItemSteps", "TooLargeError", "answered"]


class TooLargeError(Exception):
    """An output above the size a step's result may have."""


class ItemSteps:
    """A ``StepAgent``'s fan-out work (``agent.items``)."""

    def __init__(self, agent: StepAgent) -> None:
        self.agent = agent

    async def fan_out(self, ctx: Context[Any], run: Run, wf: CompiledWorkflow,
                      target: StepSpec, work: Work, prov: Provenance | None) -> None:
        """Hand ``work`` on to the for_each step ``target``: its first items (each its own
        message), or, when the list cannot run, back to the list's producer with
        findings (capped by the role's send-backs, else ``DEFAULT_SEND_BACKS``)."""
        items = await self.items(wf, target, work.state)
        art = (target.for_each or "").partition(".")[0]
        producer = wf.producer(art)
        assert producer is not None  # the check makes sure
        plan, refused = Fanouts.check(target, items, producer.role)
        if refused is None:
            await self.agent.fanouts.start(ctx, wf, target, work, plan, items,
                                           self.publisher(ctx, wf))
            return
        state = work.state
        state.findings = refused.findings
        role, sent = producer.role, state.send_backs.get(producer.role, 0)
        cap = state.send_back_caps.get(role, DEFAULT_SEND_BACKS)
        why = "; ".join(f.explanation for f in refused.findings)
        if sent >= cap:
            await run.end("rounds_exhausted", f"the {art} went back to the {role} {sent} times "
                          f"(cap {cap}) and still cannot fan out: {why}", provenance=prov)
            return
        state.send_backs[role] = sent + 1
        state.round += 1
        ctx.log.info("list sent back to its producer", step=target.id, to=producer.id, why=why)
        back = work.model_copy(update={"edge": f"{target.id}.refused"})
        await self.agent._hand_on(ctx, wf, back, producer.id, prov)

    async def items(self, wf: CompiledWorkflow, step: StepSpec, state: WorkState,
                    ) -> list[Any]:
        """The items of ``step``'s fan-out, from the artifact its ``for_each`` names."""
        art = (step.for_each or "").partition(".")[0]
        listing = await self.agent._artifact(state, art, wf.read_types[art])
        return Fanouts.items_of(step, listing)

    async def plan(self, wf: CompiledWorkflow, step: StepSpec, state: WorkState,
                   ) -> tuple[FanoutPlan, list[Any]]:
        items = await self.items(wf, step, state)
        return FanoutPlan.of(items, step.max_parallel)[0], items

    def publisher(self, ctx: Context[Any], wf: CompiledWorkflow) -> Publish:
        """Publish a fan-out's work under the id ``Fanouts`` derived for it."""
        async def publish(work: Work, to: str, msg_id: str) -> None:
            await self.agent._hand_on(ctx, wf, work, to, work.provenance, msg_id=msg_id)
        return publish

    @staticmethod
    def ender(run: Run) -> Fail:
        """End ``run`` with the joined state (a fan-out that cannot join)."""
        async def fail(state: WorkState, why: str, status: TaskStatus) -> None:
            run.state = state
            await run.end(status, why)
        return fail

    async def resume(self, ctx: Context[Any], wf: CompiledWorkflow, step: StepSpec,
                     work: Work) -> None:
        run = ctx.run
        assert run is not None
        run.step = step.id
        plan, items = await self.plan(wf, step, work.state)
        with anyio.CancelScope(shield=True):
            await self.agent.fanouts.resume(ctx, wf, step, work, plan, items,
                                            self.publisher(ctx, wf), self.ender(run))

    async def run_item(self, ctx: Context[Any], wf: CompiledWorkflow, step: StepSpec,
                       work: Work) -> None:
        """One item of a fan-out: run the step on it (unless its completion is recorded
        already: a redelivery only replays what that completion does), record its
        result, and hand on what the completion released."""
        run = ctx.run
        assert run is not None and work.item is not None
        run.step = step.id
        item = work.item
        start = work.state.model_copy(deep=True)  # every item starts from the same state
        plan, items = await self.plan(wf, step, start)
        found = await self.agent.fanouts.position(ctx, item)
        if found is None:
            result = await self.reused(wf, step, start, item, items) or \
                await self.item_result(ctx, run, wf, step, work, plan)
            if result is None:
                return  # the run ended
            found = await self.agent.fanouts.record(ctx, item, result)
        position, done = found
        origin = work.model_copy(update={"state": start})

        with anyio.CancelScope(shield=True):  # what a completion publishes is not cut
            await self.agent.fanouts.after(ctx, wf, step, origin, plan, items, position, done,
                                           self.publisher(ctx, wf), self.ender(run))

    async def item_result(self, ctx: Context[Any], run: Run, wf: CompiledWorkflow,
                          step: StepSpec, work: Work, plan: FanoutPlan,
                          ) -> ItemResult[Any] | None:
        item = work.item
        assert item is not None and step.output is not None
        state = work.state
        why = self.agent._cannot_start(ctx, wf, step, state, None)
        if why:
            await run.end("failed", why)
            return None
        output_type = wf.types[step.output]
        call = StepCall(
            workflow=wf, step=step, state=state,
            inputs={n: await self.agent._artifact(state, n, wf.read_types[n]) for n in step.input},
            previous=await self.previous_item(wf, step, state, item.key),
            output_type=output_type, model=self.agent.model_for(step), settings=self.agent.settings,
            ctx=ctx, artifacts=await self.agent._readable(state, step),
            retry_delay=self.agent.consumer.retry_delay, item=item, revise=self.agent.revise,
            routes=self.agent.routers,
        )
        tools = [self.agent.tools[t] for t in step.tool_names if t in self.agent.tools]
        parallel = step.max_parallel or plan.n
        async with self.agent.fanouts.shared_budget(ctx, item, run.ledger, state.total,
                                                    parallel) as siblings:
            # If this item ends the run (a limit, the deadline, a cancel), what the other
            # items booked is part of its spend.
            run.also_spent = lambda: Usage.sum(siblings.values())
            try:
                for tool in tools:
                    await tool.before(call)
                output = await self.agent.perform(call)
                for tool in tools:
                    output = tool.after(call, output)
                value = self.inline(output)
            except LimitReached as e:
                if e.status != "budget_exceeded":
                    raise  # the deadline or a cancel: this item ends the run now
                # The budget is spent (its siblings' calls included): this item stops
                # here, and the run ends budget_exceeded once every item has finished, so
                # the result has every item's spend, calls in flight now included.
                return self._failed(run, call, item, f"budget_exceeded: {e.reason}",
                                    limit=e.status)
            except (ModelError, ConfigError, PromptError, ValidationError, TooLargeError) as e:
                name = call.decision.model if call.decision is not None else (
                    call.model.name if call.model is not None else None)
                what = f"{type(e).__name__}: {e}"
                if not permanent(e) and ctx.deliveries < self.agent.consumer.max_deliver - 1:
                    raise Retry(f"item {item.key!r} of step {step.id!r}: {what}",
                                delay_s=self.agent.consumer.retry_delay(ctx.deliveries)) from None
                ctx.log.warning("item failed", step=step.id, item=item.key, model=name,
                                error=str(e)[:500])
                return self._failed(run, call, item, what)
            except Exception as e:
                if isinstance(e, ControlFlow) or ctx.deliveries < self.agent.consumer.max_deliver:
                    raise  # retried by the consumer, as any step's error
                # Its last delivery: the item fails (it counts as finished, min_ok decides)
                # rather than the whole run being dead-lettered with it.
                what = f"still failing after {ctx.deliveries} deliveries: " \
                       f"{type(e).__name__}: {scrub(str(e))}"
                ctx.log.warning("item failed on its last delivery", step=step.id,
                                item=item.key, error=what[:500])
                return self._failed(run, call, item, what)
        run.also_spent = None  # from here, the join (or its failure) counts every item
        usage = run.take_spend()
        answered(ctx, step, call.provenance, f"item {item.key}")
        return ItemResult[Any](index=item.index, key=item.key, ok=True, value=value, usage=usage,
                               input=item.value, provenance=call.provenance,
                               resumed_after=state.resumed_after)

    @staticmethod
    def _failed(run: Run, call: StepCall, item: WorkItem, why: str, *, limit: str = "",
                ) -> ItemResult[Any]:
        run.also_spent = None  # the join (or its failure) counts every item's spend
        return ItemResult[Any](index=item.index, key=item.key, ok=False, reason=why[:2000],
                               usage=run.take_spend(), input=item.value,
                               provenance=call.provenance,
                               resumed_after=call.state.resumed_after, limit=limit)

    async def reused(self, wf: CompiledWorkflow, step: StepSpec, state: WorkState,
                     item: WorkItem, items: list[Any]) -> ItemResult[Any] | None:
        """With ``rerun: affected``, an item's result of the round before, when it
        succeeded on the same item and the open findings for this step all point at
        other items (``affected``); None: run it."""
        if step.rerun != "affected" or not step.output or step.output not in state.artifacts:
            return None
        joined = await self.agent._artifact(state, step.output, wf.read_types[step.output])
        before = next((r for r in getattr(joined, "items", []) if r.key == item.key), None)
        if before is None or not before.ok or before.input != item.value:
            return None
        hit = affected(step, state.findings, items)
        if hit is None or item.key in hit:
            return None
        value = before.value.model_dump(mode="json") if isinstance(
            before.value, BaseModel) else before.value
        return ItemResult[Any](index=item.index, key=item.key, ok=True, value=value,
                               input=item.value, reused=True)

    async def previous_item(self, wf: CompiledWorkflow, step: StepSpec, state: WorkState,
                            key: str) -> BaseModel | None:
        """The item's own result from an earlier round of the fan-out (by its key)."""
        assert step.output is not None
        if step.output not in state.artifacts:
            return None
        joined = await self.agent._artifact(state, step.output, wf.read_types[step.output])
        for r in getattr(joined, "items", []):
            if r.key == key and r.ok and r.value is not None:
                value: BaseModel = wf.types[step.output].model_validate(
                    r.value.model_dump(mode="json") if isinstance(r.value, BaseModel)
                    else r.value)
                return value
        return None

    def inline(self, output: BaseModel) -> Any:
        """An item's output as its result holds it (always inline: the join's list is
        moved to the object store whole when it is large). Raises ``TooLargeError``."""
        data = output.model_dump(mode="json")
        size = len(json.dumps(data, separators=(",", ":")).encode())
        limit = min(self.agent.max_artifact_bytes, self.agent.inline_bytes * 4)
        if size > limit:
            raise TooLargeError(f"its {type(output).__name__} output is {size:,} bytes, above "
                                f"the limit of {limit:,} bytes for one item's result")
        return data


def answered(ctx: Context[Any], step: StepSpec, prov: Provenance | None, then: str) -> None:
    """Log a model's answer to ``step`` and where the work goes ``then``."""
    if prov is not None:
        ctx.log.info("model answered", step=step.id, model=prov.name, cost_usd=prov.cost_usd,
                     latency_s=round(prov.latency_s, 3), from_cache=prov.from_cache, then=then)
