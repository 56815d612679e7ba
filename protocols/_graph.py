"""The graph of a workflow: its checks, and the one pure routing function.

``check`` finds every fault a workflow file can have before anything runs;
``route`` decides, from a step's output and the edge counts so far, where the
work goes next or how the workflow ends. Neither does I/O, so both are tested
without NATS.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from ._workflow import END, CompiledWorkflow, Problem, StepSpec, Workflow

__all__ = ["Finish", "Goto", "check", "literal_values", "route"]

Ending = Literal["approved", "rounds_exhausted", "failed"]


@dataclass(frozen=True, slots=True)
class Goto:
    """Run ``step`` next, over ``edge`` (``'<step>.<route>'``); ``capped``: the edge
    has a cap, so taking it counts (and starts a new round)."""

    step: str
    edge: str
    capped: bool = False


@dataclass(frozen=True, slots=True)
class Finish:
    """End the workflow with ``status`` and ``reason``."""

    status: Ending
    reason: str
    edge: str = ""


def _field(output: BaseModel | Mapping[str, Any] | None, name: str) -> Any:
    if output is None:
        return None
    if isinstance(output, Mapping):
        return output.get(name)
    return vars(output).get(name)  # a field: getattr of a missing one costs an exception


def route(
    wf: CompiledWorkflow,
    step_id: str,
    output: BaseModel | Mapping[str, Any] | None,
    edges: Mapping[str, int],
    caps: Mapping[str, int] | None = None,
) -> Goto | Finish:
    """Where the work goes after ``step_id`` produced ``output``.

    ``edges`` counts how often each ``'<step>.<route>'`` edge was taken so far;
    ``caps`` overrides the ``max`` of every route with that name. A capped edge
    used up ends the workflow (``rounds_exhausted``, or ``failed`` when the
    step says ``on_cap: fail``); a value with no route fails it; ``end`` approves.
    """
    step = wf.steps[step_id]
    summary = str(_field(output, "summary") or "")
    if not step.routes:
        target = wf.successor(step_id)
        edge = f"{step_id}.next"
        if target == END:
            return Finish("approved", summary or f"{step_id} finished", edge)
        return Goto(target, edge)
    value = _field(output, step.route_on)
    key = str(value)
    chosen = step.routes.get(key)
    if chosen is None:
        return Finish(
            "failed", f"{step_id} answered {step.route_on}={value!r}, which has no route")
    edge = f"{step_id}.{key}"
    if chosen.to == END:
        return Finish("approved", summary or f"{step_id}: {key}", edge)
    cap = (caps or {}).get(key, chosen.max)
    if cap is not None:
        taken = edges.get(edge, 0)
        if taken >= cap:
            status: Ending = "failed" if step.on_cap == "fail" else "rounds_exhausted"
            why = f"{edge} taken {taken} times (cap {cap})"
            return Finish(status, f"{why}; last: {summary}" if summary else why, edge)
    return Goto(chosen.to, edge, capped=cap is not None)


def literal_values(model: type[BaseModel], field_name: str) -> list[str] | None:
    """The allowed values of a ``Literal`` field, or None when it is not one."""
    info = model.model_fields.get(field_name)
    if info is None:
        return None
    annotation = info.annotation
    if typing.get_origin(annotation) is Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return None


def _targets(wf: CompiledWorkflow, step: StepSpec) -> list[tuple[str, str, bool]]:
    """(target, path in the file, capped) for every edge out of ``step``."""
    if not step.routes:
        return [(wf.successor(step.id), "next", False)]
    return [(e.to, f"routes.{k}.to", e.max is not None) for k, e in step.routes.items()]


def check(spec: Workflow, types: Mapping[str, type[BaseModel]]) -> list[Problem]:
    """Every fault of ``spec`` given its resolved artifact ``types`` (name -> model).

    Targets that do not exist, outputs without a (resolved) type, inputs no step
    produces or that some path reaches without, routes on a field the output
    lacks or that leave one of its values unrouted, cycles without a capped edge,
    and steps never reached. An empty list means it checks.
    """
    wf = CompiledWorkflow(spec, types)
    problems: list[Problem] = []
    index = {s.id: i for i, s in enumerate(spec.steps)}
    producers: dict[str, list[str]] = {}
    for s in spec.steps:
        if s.output:
            producers.setdefault(s.output, []).append(s.id)
    for name in spec.artifacts:
        if name not in types:
            problems.append(Problem(f"artifacts.{name}",
                                    f"type {spec.artifacts[name]!r} does not resolve"))
    for s in spec.steps:
        at = f"steps[{index[s.id]}]"
        for target, where, _ in _targets(wf, s):
            if target != END and target not in index:
                problems.append(Problem(f"{at}.{where}", f"no step {target!r}; steps are "
                                        f"{', '.join(index)} (or 'end')"))
        if s.output and s.output not in spec.artifacts:
            hint = f"`artifacts: {{{s.output}: swarmbus.Text}}` (or another type)"
            why = f"artifact {s.output!r} has no type: add {hint}"
            problems.append(Problem(f"{at}.output", why))
        for name in s.input:
            if name not in producers:
                problems.append(Problem(f"{at}.input", f"no step produces {name!r}"))
        if s.routes:
            problems += _check_routes(s, at, types.get(s.output or ""))
    if spec.steps[0].input:
        problems.append(Problem("steps[0].input", "the first step runs on the task alone: "
                                "it can have no input artifacts"))
    if problems:
        return problems  # the graph analyses below need valid targets
    problems += _check_cycles(wf, index)
    problems += _check_reach_and_inputs(wf, index)
    return problems


def _check_routes(s: StepSpec, at: str, output: type[BaseModel] | None) -> list[Problem]:
    if not s.output:
        return [Problem(f"{at}.routes", "a step with routes needs an `output` to route on")]
    if output is None:
        return []  # reported as an unresolved type
    if s.route_on not in output.model_fields:
        return [Problem(f"{at}.route_on", f"{output.__name__} has no field {s.route_on!r}")]
    allowed = literal_values(output, s.route_on)
    if allowed is None:
        return []
    out = [Problem(f"{at}.routes.{k}", f"{output.__name__}.{s.route_on} is never {k!r} "
                   f"(it is one of {', '.join(allowed)})") for k in s.routes if k not in allowed]
    missing = [v for v in allowed if v not in s.routes]
    if missing:
        out.append(Problem(f"{at}.routes", f"no route for {s.route_on} = "
                           f"{', '.join(missing)}: route each value (to a step or 'end')"))
    return out


def _check_cycles(wf: CompiledWorkflow, index: Mapping[str, int]) -> list[Problem]:
    """A cycle of uncapped edges would never end: every cycle needs a capped edge."""
    graph = {s.id: [t for t, _, capped in _targets(wf, s) if t != END and not capped]
             for s in wf.spec.steps}
    color: dict[str, int] = {}
    stack: list[str] = []
    found: list[Problem] = []

    def visit(node: str) -> None:
        color[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if color.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt]
                found.append(Problem(f"steps[{index[node]}]", "cycle without a capped edge: "
                                     f"{' -> '.join(cycle)}; give one of its routes a `max`"))
            elif nxt not in color:
                visit(nxt)
        stack.pop()
        color[node] = 2

    for node in graph:
        if node not in color:
            visit(node)
    return found


def _check_reach_and_inputs(wf: CompiledWorkflow, index: Mapping[str, int]) -> list[Problem]:
    """Steps never reached, and inputs that some path reaches a step without."""
    preds: dict[str, set[str]] = {s: set() for s in index}
    for s in wf.spec.steps:
        for t, _, _ in _targets(wf, s):
            if t != END:
                preds[t].add(s.id)
    entry = wf.entry.id
    reached = {entry}
    frontier = [entry]
    while frontier:
        node = frontier.pop()
        for t, _, _ in _targets(wf, wf.steps[node]):
            if t != END and t not in reached:
                reached.add(t)
                frontier.append(t)
    problems = [Problem(f"steps[{i}]", f"step {sid!r} is never reached from {entry!r}")
                for sid, i in index.items() if sid not in reached]
    every: set[str] = {s.output for s in wf.spec.steps if s.output}
    avail_in: dict[str, set[str]] = {s: (set() if s == entry else set(every)) for s in index}
    changed = True
    while changed:  # must-available artifacts: a fixed point over the graph
        changed = False
        for sid in index:
            if sid == entry or sid not in reached:
                continue
            new: set[str] | None = None
            for p in preds[sid]:
                if p not in reached:
                    continue
                produced = wf.steps[p].output
                out = avail_in[p] | ({produced} if produced else set())
                new = set(out) if new is None else new & out
            new = new or set()
            if new != avail_in[sid]:
                avail_in[sid] = new
                changed = True
    for sid in reached:
        for name in wf.steps[sid].input:
            if name in every and name not in avail_in[sid]:
                problems.append(Problem(f"steps[{index[sid]}].input", f"{name!r} is not produced "
                                        f"on every path to {sid!r}"))
    return problems
