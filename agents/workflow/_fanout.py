"""Fan-out and join on NATS: items published once, completions recorded with
compare-and-set, the join published by the one completion that finished the set.

The pure part (which items run after which completion, when the set is
complete) is ``swarmbus.protocols.FanoutPlan``. This module does the I/O:

- ``start``: the step before a ``for_each`` step publishes the first items, each
  with an id derived from the run, the fan-out and the item (``item_msg_id``);
- ``record``: an item's result is stored under its own key, then its completion
  is appended to the fan-out's record with compare-and-set (a duplicate finds
  itself there and gets its old position back);
- ``after``: the completion at position ``p`` publishes what position ``p``
  released, and, if ``p`` finished the set, the join (``join_msg_id``). A
  redelivery replays the same position, so it publishes the same ids again,
  which the stream drops; the record's ``fired`` mark stops a replay after the
  stream's duplicate window.

Keys, in bucket ``joins`` (a week's TTL): ``<run>.<fanout>`` (the record),
``<run>.<fanout>.i<index>`` (an item's result), ``<run>.<fanout>.s<index>``
(what an item in flight has spent so far, read by its siblings' budget checks).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import anyio
from nats.aio.msg import Msg
from pydantic import BaseModel

from swarmbus.bus import Bus, KeyValueStore
from swarmbus.protocols import (
    CompiledWorkflow,
    FanoutPlan,
    Finding,
    ItemResult,
    Joined,
    Progress,
    StepSpec,
    TaskStatus,
    Usage,
    Work,
    WorkItem,
    WorkState,
    fanout_key,
    item_msg_id,
    join_msg_id,
)

from .._agent import Context
from ..models import Ledger

__all__ = ["Fanouts", "Refused", "affected"]

_BUCKET = "joins"
_TTL_S = 7 * 24 * 3600.0
DEFAULT_SEND_BACKS = 2
"""How often a list is sent back to its producer (too many items, a bad dependency)
when the task sets no send-back cap for that role."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A list the fan-out cannot run: it goes back to its producer with ``findings``."""

    findings: list[Finding]


Publish = Callable[[Work, str, str], Awaitable[None]]
"""Publish work on a step's topic with a given ``Nats-Msg-Id``: (work, step id, msg id)."""
Fail = Callable[[WorkState, str, TaskStatus], Awaitable[None]]
"""End the run with a fan-out's joined state: (state, reason, status)."""


class Fanouts:
    """The fan-out side of a step agent: one per ``StepAgent``, opened in ``setup``."""

    def __init__(self) -> None:
        self.bus: Bus | None = None
        self._store: KeyValueStore | None = None

    async def setup(self, bus: Bus) -> None:
        self.bus = bus

    async def store(self) -> KeyValueStore:
        """The ``joins`` bucket, opened (made) the first time a fan-out needs it: a
        namespace whose workflows never fan out has none."""
        if self._store is None:
            assert self.bus is not None, "Fanouts.setup first"
            self._store = await self.bus.key_value(_BUCKET, ttl_s=_TTL_S)
        return self._store

    # -- starting ---------------------------------------------------------------------------

    @staticmethod
    def items_of(step: StepSpec, listing: BaseModel | dict[str, Any]) -> list[Any]:
        """The items of ``step``'s ``for_each`` list in ``listing`` (the artifact)."""
        assert step.for_each is not None
        field = step.for_each.partition(".")[2]
        data = listing.model_dump(mode="json") if isinstance(listing, BaseModel) else listing
        value = data.get(field)
        return list(value) if isinstance(value, list) else []

    @staticmethod
    def check(step: StepSpec, items: list[Any], producer: str) -> tuple[FanoutPlan, Refused | None]:
        """The plan for ``items``, or why they go back to ``producer`` (a role)."""
        plan, problems = FanoutPlan.of(items, step.max_parallel)
        if step.max_items is not None and len(items) > step.max_items:
            problems.insert(0, f"{len(items)} items for step {step.id!r}, above its max_items "
                            f"of {step.max_items}: merge some")
        if not problems:
            return plan, None
        return plan, Refused([Finding(severity="major", location=step.for_each or "",
                                      explanation=p, target=producer) for p in problems])

    async def start(self, ctx: Context[Any], wf: CompiledWorkflow, step: StepSpec, work: Work,
                    plan: FanoutPlan, items: list[Any], publish: Publish) -> None:
        """Publish the first items of a fan-out of ``step`` for ``work`` (its state the
        state every item starts from); with no items, the join at once."""
        state = work.state
        key = fanout_key(step.id, state.round, state.steps)
        if not items:
            joined = Joined[Any](items=[])
            await self._publish_join(ctx, wf, step, work, key, joined, [], publish)
            return
        await self._publish_items(ctx, step, work, key, plan, items, plan.start(), publish,
                                  first_carries=True)

    async def _publish_items(self, ctx: Context[Any], step: StepSpec, work: Work, key: str,
                             plan: FanoutPlan, items: list[Any], indices: list[int],
                             publish: Publish, *, first_carries: bool = False) -> None:
        """Publish items ``indices`` at once (each awaits its own ack). What the step
        that handed the work on spent and its model go on the first item only
        (``first_carries``), so a trail's costs still add up to the total."""
        first = min(indices, default=-1) if first_carries else -1

        async def one(i: int) -> None:
            item = WorkItem(fanout=key, index=i, total=plan.n, key=plan.keys[i],
                            value=items[i])
            update: dict[str, Any] = {"item": item}
            if i != first:
                update.update(usage=None, provenance=None)
            out = work.model_copy(update=update)
            await publish(out, step.id, item_msg_id(ctx.workflow_id, key, i,
                                                    work.state.resumed_after))

        async with anyio.create_task_group() as tg:
            for i in indices:
                tg.start_soon(one, i)

    async def resume(self, ctx: Context[Any], wf: CompiledWorkflow, step: StepSpec,
                     work: Work, plan: FanoutPlan, items: list[Any], publish: Publish,
                     fail: Fail) -> None:
        """Go on with a fan-out of a resumed run (``swarmbus retry`` of a run that ended
        while its items ran): the items it had started and not finished run again
        (under ids of the resumed run), those not started yet start as completions
        release them, and a set already complete publishes its join."""
        key = fanout_key(step.id, work.state.round, work.state.steps)
        done, _ = await self._record(f"{ctx.workflow_id}.{key}")
        progress = plan.replay(done)
        if not done:
            await self._publish_items(ctx, step, work, key, plan, items, plan.start(), publish)
            return
        if progress.complete and progress.completed_at is not None:
            item = WorkItem(fanout=key, index=done[progress.completed_at][0], total=plan.n)
            last = work.model_copy(update={"item": item})
            await self.after(ctx, wf, step, last, plan, items, progress.completed_at, done,
                             publish, fail, fresh=True)
            return
        await self._publish_items(ctx, step, work, key, plan, items, progress.running, publish)

    # -- one item ---------------------------------------------------------------------------

    def _base(self, ctx: Context[Any], item: WorkItem) -> str:
        return f"{ctx.workflow_id}.{item.fanout}"

    async def position(self, ctx: Context[Any], item: WorkItem,
                       ) -> tuple[int, list[tuple[int, bool]]] | None:
        """Where this item's completion is in the record (and the record), or None when it
        has not completed yet."""
        done, _ = await self._record(self._base(ctx, item))
        for p, (i, _ok) in enumerate(done):
            if i == item.index:
                return p, done
        return None

    async def _record(self, key: str) -> tuple[list[tuple[int, bool]], int]:
        got = await (await self.store()).entry(key)
        if got is None:
            return [], 0
        data = json.loads(got[0])
        return [(int(i), bool(ok)) for i, ok in data.get("done", [])], got[1]

    async def record(self, ctx: Context[Any], item: WorkItem, result: ItemResult[Any],
                     ) -> tuple[int, list[tuple[int, bool]]]:
        """Store ``result``, then append its completion to the record (compare-and-set;
        a duplicate gets its earlier position). Returns (position, record)."""
        store = await self.store()
        base = self._base(ctx, item)
        await store.put(f"{base}.i{item.index}", result.model_dump_json().encode())
        while True:
            done, revision = await self._record(base)
            for p, (i, _ok) in enumerate(done):
                if i == item.index:
                    return p, done
            new = [*done, (item.index, result.ok)]
            body = json.dumps({"done": new}).encode()
            if await store.swap(base, body, revision) is not None:
                return len(done), new

    async def after(self, ctx: Context[Any], wf: CompiledWorkflow, step: StepSpec, work: Work,
                    plan: FanoutPlan, items: list[Any], position: int,
                    done: list[tuple[int, bool]], publish: Publish,
                    fail: Fail, *,
                    fresh: bool = False) -> Progress:
        """What completion ``position`` does: publish the items it released; if it
        finished the set, the join, or ``fail`` with the joined state: ``failed`` when
        fewer items succeeded than the join's ``min_ok``, ``budget_exceeded`` when the
        budget stopped an item."""
        item = work.item
        assert item is not None
        progress = plan.replay(done[:position + 1])
        await self._publish_items(ctx, step, work, item.fanout, plan, items,
                                  progress.released, publish)
        if progress.completed_at != position:
            return progress
        base = self._base(ctx, item)
        store = await self.store()
        fired = await store.get(f"{base}.fired")
        if fired is not None and not fresh:
            return progress  # published before, longer ago than the duplicate window
        results = await self._results(base, plan, progress)
        joined = Joined[Any](items=results)
        join_step = wf.steps[wf.joins[step.id]]
        need = join_step.min_ok if join_step.min_ok is not None else plan.n
        stopped = next((r for r in results if r.limit), None)
        if stopped is not None:
            state = self.joined_state(step, work.state, joined)
            await fail(state, f"item {stopped.key!r} of step {step.id!r}: "
                       f"{stopped.reason.removeprefix(stopped.limit + ': ')}",
                       cast(TaskStatus, stopped.limit))
            return progress
        if progress.ok < need:
            state = self.joined_state(step, work.state, joined)
            await fail(state, f"{progress.ok} of {plan.n} items of step {step.id!r} succeeded; "
                       f"the join {join_step.id!r} needs {need} (min_ok)", "failed")
            return progress
        await self._publish_join(ctx, wf, step, work, item.fanout, joined, results, publish)
        await store.put(f"{base}.fired", b"1")
        return progress

    async def _read(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` (None: no value), read at once, in their order."""
        store = await self.store()
        out: list[bytes | None] = [None] * len(keys)

        async def read(n: int) -> None:
            out[n] = await store.get(keys[n])

        async with anyio.create_task_group() as tg:
            for n in range(len(keys)):
                tg.start_soon(read, n)
        return out

    async def _spent(self, base: str, item: WorkItem) -> dict[int, Usage]:
        """What each other item of the fan-out has stored as its spend so far."""
        others = [j for j in range(item.total) if j != item.index]
        out: dict[int, Usage] = {}
        for j, raw in zip(others, await self._read([f"{base}.s{j}" for j in others]),
                          strict=True):
            if raw:
                with contextlib.suppress(ValueError):
                    out[j] = Usage.model_validate_json(raw)
        return out

    async def _results(self, base: str, plan: FanoutPlan, progress: Progress,
                       ) -> list[ItemResult[Any]]:
        raws = await self._read([f"{base}.i{i}" for i in range(plan.n)])
        out: list[ItemResult[Any]] = []
        for i in range(plan.n):
            raw = raws[i]
            if raw is not None:
                out.append(ItemResult[Any].model_validate_json(raw))
                continue
            failed = sorted(plan.keys[d] for d in plan.deps[i] if not progress.finished.get(d))
            out.append(ItemResult[Any](index=i, key=plan.keys[i], ok=False,
                                       reason=f"skipped: depends on {', '.join(failed)}, "
                                       "which did not succeed"))
        return out

    @staticmethod
    def joined_state(step: StepSpec, state: WorkState, joined: Joined[Any]) -> WorkState:
        """``state`` (as the fan-out started) with the items' results under the step's
        output, their spend booked to the step's role, one step counted per item run,
        and a finding for each item that did not succeed. (An item run before the run
        was resumed is in the resumed run's spend already.)"""
        out = state.model_copy(deep=True)
        assert step.output is not None
        out.artifacts[step.output] = joined.model_dump(mode="json")
        spent = Usage.sum(r.usage for r in joined.items
                          if r.resumed_after == state.resumed_after)
        out.spend[step.role] = out.spend.get(step.role, Usage()) + spent
        out.steps += sum(1 for r in joined.items if not r.reason.startswith("skipped"))
        out.findings = [*out.findings, *(
            Finding(severity="major", location=f"{step.id}[{r.key}]", target=step.role,
                    explanation=r.reason or "failed") for r in joined.items if not r.ok)]
        return out

    async def _publish_join(self, ctx: Context[Any], wf: CompiledWorkflow, step: StepSpec,
                            work: Work, key: str, joined: Joined[Any],
                            results: list[ItemResult[Any]], publish: Publish) -> None:
        state = self.joined_state(step, work.state, joined)
        out = Work(state=state, source=step.id, output=step.output or "",
                   edge=f"{step.id}.join", provenance=None if results else work.provenance,
                   usage=Usage.sum(r.usage for r in results) if results else work.usage)
        after = work.state.resumed_after
        await publish(out, wf.joins[step.id],
                      join_msg_id(ctx.workflow_id, f"{key}~{after}" if after else key))

    async def spent_by_others(self, workflow_id: str, item: WorkItem) -> Usage:
        """What the fan-out's other items booked so far (their stored spend): for whoever
        ends the run from ``item``'s work (the supervisor, at a deadline no handler met)."""
        return Usage.sum((await self._spent(f"{workflow_id}.{item.fanout}", item)).values())

    # -- the budget across items ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def shared_budget(self, ctx: Context[Any], item: WorkItem, ledger: Ledger,
                            before: Usage, parallel: int) -> AsyncIterator[dict[int, Usage]]:
        """While an item runs: its ledger counts what its siblings booked so far (read
        now, then kept current from the bucket's own messages), each paid call of its
        own is stored for them, and one call's worst case is fitted to ``left /
        parallel``. Yields the siblings' spend by index (what this item must add to
        the run's spend if it ends the run)."""
        store = await self.store()
        assert self.bus is not None
        base = self._base(ctx, item)
        siblings: dict[int, Usage] = {}

        def seen() -> None:
            ledger.see_spent(before + Usage.sum(siblings.values()))

        def take(index: int, raw: bytes) -> None:
            if index != item.index and raw:
                with contextlib.suppress(ValueError):
                    siblings[index] = Usage.model_validate_json(raw)
                    seen()

        async def on_update(msg: Msg) -> None:
            token = msg.subject.rpartition(".")[2]
            if token.startswith("s") and token[1:].isdigit():
                take(int(token[1:]), msg.data)

        sub = await self.bus.nc.subscribe(f"$KV.{store.bucket}.{base}.*", cb=on_update)
        for j, usage in (await self._spent(base, item)).items():  # booked before now
            siblings.setdefault(j, usage)  # an update heard meanwhile is newer
        seen()
        inner = ledger.persist

        async def persist(usage: Usage) -> None:
            if inner is not None:
                await inner(usage)
            await store.put(f"{base}.s{item.index}", usage.model_dump_json().encode())

        ledger.persist = persist
        ledger.share = max(1, min(parallel, item.total))
        try:
            yield siblings
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await sub.unsubscribe()


def affected(step: StepSpec, findings: list[Finding], items: list[Any]) -> set[str] | None:
    """The keys of the items the open ``findings`` for ``step`` point at; None when
    every item must run again (no finding for the step, or one that points at no item
    in particular). A finding is for the step when its target is the step's role or
    id, or an item (``parser``, ``build[parser]``); it points at an item named in its
    target or location (``build[parser]: x.py``), or whose ``files`` its location or
    explanation names."""
    keys: list[str] = []
    files: dict[str, list[str]] = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        key = str(name) if isinstance(name, str) and name else str(i)
        keys.append(key)
        owned = item.get("files") if isinstance(item, dict) else None
        files[key] = [str(f) for f in owned] if isinstance(owned, list) else []
    mine = {step.role.lower(), step.id.lower()}
    hit: set[str] = set()
    relevant = 0
    for f in findings:
        target = f.target.strip()
        pointed = {k for k in keys if target in (k, f"{step.id}[{k}]")
                   or f.location.startswith(f"{step.id}[{k}]")
                   or any(_names(path, f.location) or _names(path, f.explanation)
                          for path in files[k])}
        if not pointed and target.lower() not in mine:
            continue  # another step's finding
        relevant += 1
        if not pointed:
            return None
        hit |= pointed
    return hit if relevant else None


def _names(path: str, text: str) -> bool:
    """Whether ``text`` names ``path`` (as a whole path, not inside a longer name)."""
    start = text.find(path)
    while start != -1:
        before = text[start - 1] if start else " "
        end = start + len(path)
        after = text[end] if end < len(text) else " "
        if not (before.isalnum() or before in "_/.") and not (after.isalnum() or after == "_"):
            return True
        start = text.find(path, start + 1)
    return False
