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
from swarmbus.protocols import TaskResult, Usage, Work, topics

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
        for msg in await bus.history(wf_id):
            work = msg.try_decode()
            if work is None or not isinstance(work.message, Work):
                continue
            w = work.message
            prov = w.provenance
            if prov is None or not w.source or w.item is not None:
                continue
            key = (w.source, prov.name)
            usage = w.usage or prov.usage()
            if key in seen:
                f, total, took, propensity = seen[key]
                seen[key] = (f, total + usage, took + prov.latency_s, propensity)
                continue
            if prov.route is not None and prov.route.features:
                f = Features.model_validate(prov.route.features)
            else:
                f = _features(w, await name_of(w.state.workflow or work.meta.workflow or ""),
                              work.sender or "")
            seen[key] = (f, usage, prov.latency_s,
                         prov.route.probability if prov.route is not None else None)
        for (step, model), (f, usage, took, propensity) in seen.items():
            rows.append(OutcomeRow(
                at=ended, workflow_id=wf_id, workflow=f.workflow, step=step, model=model,
                features=f, approved=approved, rounds=result.rounds,
                cost_usd=usage.cost_usd, latency_s=took, propensity=propensity))
    return rows


def _features(w: Work, workflow: str, role: str) -> Features:
    """A step's features read from the work it published (the run's first round of it):
    its inputs approximated by every artifact but its own output."""
    from ..routing import Features

    state, task = w.state, w.state.task
    sizes = sum(len(str(v)) for k, v in state.artifacts.items() if k != w.output)
    return Features(
        workflow=workflow, step=w.source, role=role, goal=task.goal,
        constraints=list(task.constraints),
        language=task.language, input_chars=sizes, round=state.round,
        open_findings=len(state.findings),
        budget_left_usd=max(state.budget_usd - state.total.priced_cost_usd, 0.0))
