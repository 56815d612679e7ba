"""Which part of a step's prompt its later rounds send again: where a prompt cache pays.

A provider's prompt cache serves a request's prefix that an earlier request wrote.
Writing costs more than plain input (Anthropic: 1.25x for 5-minute entries), so a
breakpoint is worth placing only where the same prefix comes again. Within one run
that happens when a step runs again (a send-back), and then only the inputs whose
producer did not run in between are unchanged. Both follow from the graph alone.
"""

from __future__ import annotations

from swarmbus.protocols import END, CompiledWorkflow, StepSpec

__all__ = ["steady_inputs"]


def _next(wf: CompiledWorkflow, step: StepSpec) -> list[str]:
    if step.routes:
        return [e.to for e in step.routes.values() if e.to and e.to != END]
    after = wf.successor(step.id)
    return [] if after == END else [after]


def _returns(wf: CompiledWorkflow, start: str, avoid: str | None) -> bool:
    """Whether some path from ``start`` comes back to it without passing ``avoid``."""
    seen: set[str] = set()
    todo = [n for n in _next(wf, wf.steps[start]) if n != avoid]
    while todo:
        node = todo.pop()
        if node == start:
            return True
        if node in seen or node not in wf.steps:
            continue
        seen.add(node)
        todo += [n for n in _next(wf, wf.steps[node]) if n != avoid]
    return False


def _plan(wf: CompiledWorkflow, step_id: str) -> tuple[str, ...] | None:
    if not _returns(wf, step_id, None):
        return None
    steady = []
    for name in wf.steps[step_id].input:
        producer = wf.producer(name)
        if producer is None or _returns(wf, step_id, producer.id):
            steady.append(name)
    return tuple(steady)


_plans: dict[tuple[str, str], tuple[str, ...] | None] = {}


def steady_inputs(wf: CompiledWorkflow, step: StepSpec) -> tuple[str, ...] | None:
    """The inputs of ``step`` that can reach a later run of it unchanged (a path from
    the step back to itself avoids their producer), in the step's order; None when
    the step never runs twice in one run (nothing of its prompt comes again)."""
    key = (wf.hash, step.id)
    if key not in _plans:
        _plans[key] = _plan(wf, step.id)
    return _plans[key]
