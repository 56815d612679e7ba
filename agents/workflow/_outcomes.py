"""The swarm's own outcomes as routing data: one row per (run, step, model) from the stream.

``swarmbus route export`` writes them (JSONL) for ``swarmbus route train``. A row says
which model served a step of a run, what the router read (the decision's features;
for a step that was not routed, the same features taken from the work message the
step published), whether the run was approved within ``k_rounds``, and what the
step cost and took over all its rounds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from swarmbus.bus import Bus, WorkflowStore
from swarmbus.protocols import (
    Provenance,
    TaskRequest,
    TaskResult,
    Usage,
    Work,
    WorkState,
    topics,
)

from ._routing import task_chars

if TYPE_CHECKING:  # routing needs numpy (the `route` extra)
    from ..routing import Features, OutcomeRow

__all__ = ["outcome_rows"]


async def outcome_rows(bus: Bus, *, k_rounds: int = 3, after_seq: int = 0) -> list[OutcomeRow]:
    """Every ended run's rows in ``bus``'s namespace (results after stream sequence
    ``after_seq``), oldest run first. ``approved``: the run ended approved in at most
    ``k_rounds`` rounds. A step served by several models in one run (a fallback, a
    switch) gives one row per model."""
    from ..routing import Features, OutcomeRow

    rows: list[OutcomeRow] = []
    store = await WorkflowStore.find(bus)
    names: dict[str, str] = {}

    async def name_of(ref: str) -> str:
        if ref not in names:
            wf = await store.get(ref) if store is not None and ref else None
            names[ref] = wf.name if wf is not None else ref
        return names[ref]

    for stored in await bus.on_topic(topics.RESULT, after_seq=after_seq):
        env = stored.try_decode()
        if env is None or not isinstance(env.message, TaskResult):
            continue
        result, wf_id = env.message, env.workflow_id
        ended = datetime.fromisoformat(stored.time.replace("Z", "+00:00")) if stored.time \
            else datetime.now(UTC)
        approved = result.status == "approved" and result.rounds <= k_rounds
        seen: dict[tuple[str, str], tuple[Features, Usage, float, float | None]] = {}
        last: dict[str, str] = {}  # step -> the model that served it last
        # Each step's output is in the work it handed on; the step that ended the run
        # is in the result (its model, what that last delivery spent).
        ended_by: list[tuple[str, Provenance | None, Usage | None, str, str]] = []
        read: dict[str, WorkState] = {}  # step -> the state it read at its first run
        name = await name_of(result.workflow or env.meta.workflow or "")
        task: TaskRequest | None = None
        for msg in await bus.history(wf_id):
            work = msg.try_decode()
            if work is not None and isinstance(work.message, TaskRequest) and task is None:
                task = work.message
            if work is None or not isinstance(work.message, Work):
                continue
            w = work.message
            read.setdefault(work.topic.removeprefix("step."), w.state)
            if w.source and w.item is None:
                ended_by.append((w.source, w.provenance, w.usage, w.output, work.sender or ""))
        if result.step:
            ended_by.append((result.step, result.provenance, result.usage, "",
                             env.sender or ""))
        for step, prov, spent, output, sender in ended_by:
            model = prov.name if prov is not None else last.get(step)
            if model is None:
                continue  # a step that made no call and has no model (served by code)
            last[step] = model
            usage = spent or (prov.usage() if prov is not None else Usage())
            took = prov.latency_s if prov is not None else 0.0
            key = (step, model)
            if key in seen:
                f, total, before, propensity = seen[key]
                seen[key] = (f, total + usage, before + took, propensity)
                continue
            route = prov.route if prov is not None else None
            if route is not None and route.features:
                f = Features.model_validate(route.features)
            else:
                f = _features(read.get(step), task, step, output, name, sender)
            seen[key] = (f, usage, took, route.probability if route is not None else None)
        for (step, model), (f, usage, took, propensity) in seen.items():
            rows.append(OutcomeRow(
                at=ended, workflow_id=wf_id, workflow=f.workflow, step=step, model=model,
                features=f, approved=approved, rounds=result.rounds,
                cost_usd=usage.cost_usd, latency_s=took, propensity=propensity))
    return rows


def _features(state: WorkState | None, task: TaskRequest | None, step: str, output: str,
              workflow: str, role: str) -> Features:
    """A step's features from the state it read at its first run (the work addressed to
    it; none for the first step, which reads the task alone): the task's characters and
    every artifact's but its own output's."""
    from ..routing import Features

    if state is None:  # the first step: the task alone
        task = task or TaskRequest(goal="(unknown)")
        return Features(workflow=workflow, step=step, role=role, goal=task.goal,
                        constraints=list(task.constraints), language=task.language,
                        input_chars=task_chars(task), round=1, open_findings=0,
                        budget_left_usd=task.limits.budget_usd)
    task = state.task
    sizes = task_chars(task) + sum(len(str(v)) for k, v in state.artifacts.items()
                                   if k != output)
    return Features(
        workflow=workflow, step=step, role=role, goal=task.goal,
        constraints=list(task.constraints),
        language=task.language, input_chars=sizes, round=state.round,
        open_findings=len(state.findings),
        budget_left_usd=max(state.budget_usd - state.total.priced_cost_usd, 0.0))
