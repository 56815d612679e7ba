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
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel

from ._data import Code, Finding
from ._workflow import END, CompiledWorkflow, Problem, StepSpec, Workflow

__all__ = [
    "TASK_FIELDS",
    "Finish",
    "Goto",
    "available_artifacts",
    "check",
    "list_item_type",
    "literal_values",
    "route",
    "route_key",
    "route_values",
]

Ending = Literal["approved", "rounds_exhausted", "failed"]


@dataclass(frozen=True, slots=True)
class Goto:
    """Run ``step`` next, over ``edge`` (``'<step>.<route>'``); ``capped``: a cap applies
    to it, so taking it counts (and starts a new round); ``sent_back_to``: the role the
    work goes back to when the edge loops back (None when it goes forward)."""

    step: str
    edge: str
    capped: bool = False
    sent_back_to: str | None = None


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


def route_key(value: Any) -> str:
    """The route a route field's value names: a bool is ``"true"``/``"false"`` (as YAML
    and JSON write it), an Enum member its value, anything else its text."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def route(
    wf: CompiledWorkflow,
    step_id: str,
    output: BaseModel | Mapping[str, Any] | None,
    edges: Mapping[str, int],
    caps: Mapping[str, int] | None = None,
    *,
    send_backs: Mapping[str, int] | None = None,
    send_back_caps: Mapping[str, int] | None = None,
) -> Goto | Finish:
    """Where the work goes after ``step_id`` produced ``output``.

    ``edges`` counts how often each ``'<step>.<route>'`` edge was taken so far and
    ``send_backs`` how often work was sent back to each role. The limits that apply
    to a route: ``caps[name]`` (counted over every edge of that route name), and for
    an edge that sends work back to a role, ``send_back_caps[role]`` (counted over
    every send-back to that role); when neither is given, the route's own ``max``
    (counted on this edge). One used up ends the workflow (``rounds_exhausted``, or
    ``failed`` when the step says ``on_cap: fail``); a value with no route fails it;
    a route to ``end`` ends it with the route's status (``approved`` by default).
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
    key = route_key(value)
    chosen = step.routes.get(key)
    if chosen is None:
        return Finish(
            "failed", f"{step_id} answered {step.route_on}={value!r}, which has no route")
    edge = f"{step_id}.{key}"
    if chosen.to == END:
        return Finish(chosen.status, summary or f"{step_id}: {key}", edge)
    back = wf.steps[chosen.to].role if wf.sends_back(step_id, chosen.to) else None
    limits: list[tuple[int, int, str]] = []  # (limit, times so far, what it counts)
    if caps and key in caps:
        taken = sum(n for e, n in edges.items() if e.rpartition(".")[2] == key)
        limits.append((caps[key], taken, f"route {key!r} taken {taken} times (cap {caps[key]})"))
    if back is not None and send_back_caps and back in send_back_caps:
        sent = (send_backs or {}).get(back, 0)
        limits.append((send_back_caps[back], sent,
                       f"work sent back to the {back} {sent} times (cap "
                       f"{send_back_caps[back]})"))
    if not limits and chosen.max is not None:
        taken = edges.get(edge, 0)
        limits.append((chosen.max, taken, f"{edge} taken {taken} times (cap {chosen.max})"))
    for limit, taken, what in limits:
        if taken >= limit:
            status: Ending = "failed" if step.on_cap == "fail" else "rounds_exhausted"
            return Finish(status, f"{what}; last: {summary}" if summary else what, edge)
    return Goto(chosen.to, edge, capped=bool(limits), sent_back_to=back)


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def route_values(model: type[BaseModel], field_name: str) -> list[str] | None:
    """The routes a field can name (see ``route_key``): the values of a ``Literal``,
    ``true``/``false`` of a ``bool``, an ``Enum``'s values; None when the field is not a
    fixed set of values (or does not exist)."""
    info = model.model_fields.get(field_name)
    if info is None:
        return None
    annotation = _unwrap(info.annotation)
    if typing.get_origin(annotation) is Literal:
        return list(dict.fromkeys(route_key(v) for v in typing.get_args(annotation)))
    if annotation is bool:
        return ["true", "false"]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [route_key(m) for m in annotation]
    return None


def literal_values(model: type[BaseModel], field_name: str) -> list[str] | None:
    """The allowed values of a ``Literal`` field, or None when it is not one."""
    info = model.model_fields.get(field_name)
    if info is None or typing.get_origin(_unwrap(info.annotation)) is not Literal:
        return None
    return route_values(model, field_name)


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
        output = types.get(s.output or "")
        if s.revise is not None and output is not None and not issubclass(output, Code):
            problems.append(Problem(f"{at}.revise", f"revise applies to code: {output.__name__} "
                                    "is not swarmbus.Code or a type derived from it"))
        if s.routes:
            problems += _check_routes(s, at, output)
        elif output is not None and route_values(output, s.route_on) is not None:
            problems.append(Problem(f"{at}.routes", f"{output.__name__}.{s.route_on} picks "
                                    f"a route, but step {s.id!r} has no `routes`, so its "
                                    f"answer would be ignored: route each of its values "
                                    f"({', '.join(route_values(output, s.route_on) or [])}) "
                                    "to a step or `end`"))
    for name in spec.inputs:
        if name in TASK_FIELDS:
            problems.append(Problem(f"inputs.{name}", f"{name!r} is the task's own field "
                                    "({{ inputs." + name + " }}): name the input otherwise"))
    for name, type_ in types.items():
        problems += _state_collisions(f"artifacts.{name}", type_)
    if spec.steps[0].input:
        problems.append(Problem("steps[0].input", "the first step runs on the task alone: "
                                "it can have no input artifacts"))
    problems += _check_fanouts(wf, index, types)
    if problems:
        return problems  # the graph analyses below need valid targets
    problems += _check_cycles(wf, index)
    problems += _check_reach_and_inputs(wf, index)
    return problems


def list_item_type(model: type[BaseModel] | None, field_name: str) -> Any:
    """The item type of ``model.field_name`` when it is a list (``Any`` for an untyped
    list), else None (no such field, or not a list)."""
    if model is None or field_name not in model.model_fields:
        return None
    annotation = _unwrap(model.model_fields[field_name].annotation)
    if annotation is list:
        return Any
    if typing.get_origin(annotation) is list:
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None


def _check_fanouts(wf: CompiledWorkflow, index: Mapping[str, int],
                   types: Mapping[str, type[BaseModel]]) -> list[Problem]:
    """``for_each`` names a list field of an artifact, the step has no routes and is
    joined by exactly one step, ``join`` names a ``for_each`` step, and the fan-out's
    own keys appear only on fan-out (or join) steps."""
    out: list[Problem] = []
    joined: dict[str, list[str]] = {}
    for s in wf.spec.steps:
        if s.join is not None:
            joined.setdefault(s.join, []).append(s.id)
    for s in wf.spec.steps:
        at = f"steps[{index[s.id]}]"
        if s.for_each is None:
            for key, value in (("max_parallel", s.max_parallel), ("max_items", s.max_items)):
                if value is not None:
                    out.append(Problem(f"{at}.{key}", f"`{key}` applies to a step with "
                                       "`for_each`"))
            if s.rerun != "all":
                out.append(Problem(f"{at}.rerun", "`rerun` applies to a step with `for_each`"))
            if s.as_ != "item":
                out.append(Problem(f"{at}.as", "`as` names the item of a step with `for_each`"))
        else:
            art, _, list_field = s.for_each.partition(".")
            if s.id == wf.entry.id:
                out.append(Problem(f"{at}.for_each", "the first step runs on the task alone: "
                                   "it cannot run for each item of an artifact"))
            if art not in wf.spec.artifacts:
                out.append(Problem(f"{at}.for_each", f"no artifact {art!r}; artifacts are "
                                   f"{', '.join(wf.spec.artifacts) or 'none'}"))
            elif art in types and list_item_type(types[art], list_field) is None:
                fields = ", ".join(f for f in types[art].model_fields
                                   if list_item_type(types[art], f) is not None)
                out.append(Problem(f"{at}.for_each", f"{types[art].__name__}.{list_field} is "
                                   f"not a list field (its list fields: {fields or 'none'})"))
            if s.as_ in ("inputs", "artifacts", "findings", "round", "role", "step"):
                out.append(Problem(f"{at}.as", f"{s.as_!r} is a template name of every step: "
                                   "name the item otherwise"))
            if s.routes:
                out.append(Problem(f"{at}.routes", "a step with `for_each` goes to the step that "
                                   "joins it: it cannot have `routes` (route at the join)"))
            names = joined.get(s.id, [])
            if not names:
                out.append(Problem(f"{at}.for_each", f"no step joins {s.id!r}: add a step with "
                                   f"`join: {s.id}` after it"))
            elif len(names) > 1:
                out.append(Problem(f"{at}.for_each", f"steps {', '.join(names)} all join "
                                   f"{s.id!r}: one step joins a fan-out"))
            elif s.next is not None and s.next != names[0]:
                out.append(Problem(f"{at}.next", f"a fan-out step goes to the step that joins "
                                   f"it ({names[0]!r}), not {s.next!r}"))
            if not s.output:
                out.append(Problem(f"{at}.output", "a step with `for_each` needs an `output`: "
                                   "the join reads each item's result under its name"))
        if s.join is not None:
            target = wf.steps.get(s.join)
            if s.for_each is not None:
                out.append(Problem(f"{at}.join", "a step cannot both join a fan-out and fan "
                                   "out itself: put a step between"))
            elif target is not None and target.max_items is not None and \
                    s.min_ok is not None and s.min_ok > target.max_items:
                out.append(Problem(f"{at}.min_ok", f"min_ok {s.min_ok} can never be met: "
                                   f"{s.join!r} runs at most {target.max_items} items "
                                   "(max_items)"))
            if target is None or target.for_each is None:
                fanouts = [f.id for f in wf.spec.steps if f.for_each is not None]
                out.append(Problem(f"{at}.join", f"{s.join!r} is not a step with `for_each` "
                                   f"(those are: {', '.join(fanouts) or 'none'})"))
            elif s.join == s.id:
                out.append(Problem(f"{at}.join", "a step cannot join itself"))
        elif s.min_ok is not None:
            out.append(Problem(f"{at}.min_ok", "`min_ok` applies to a step with `join`"))
    return out


def _check_routes(s: StepSpec, at: str, output: type[BaseModel] | None) -> list[Problem]:
    if not s.output:
        return [Problem(f"{at}.routes", "a step with routes needs an `output` to route on")]
    if output is None:
        return []  # reported as an unresolved type
    if s.route_on not in output.model_fields:
        return [Problem(f"{at}.route_on", f"{output.__name__} has no field {s.route_on!r}")]
    allowed = route_values(output, s.route_on)
    if allowed is None:
        return [Problem(f"{at}.route_on", f"{output.__name__}.{s.route_on} is not a fixed set "
                        "of values, so a model could answer one no route takes: make it a "
                        "Literal, a bool or an Enum")]
    out = [Problem(f"{at}.routes.{k}", f"{output.__name__}.{s.route_on} is never {k!r} "
                   f"(it is one of {', '.join(allowed)})") for k in s.routes if k not in allowed]
    missing = [v for v in allowed if v not in s.routes]
    if missing:
        out.append(Problem(f"{at}.routes", f"no route for {s.route_on} = "
                           f"{', '.join(missing)}: route each value (to a step or 'end')"))
    return out


TASK_FIELDS = frozenset({"goal", "constraints", "language"})
"""Names a template reads from the task itself (``{{ inputs.goal }}``)."""


def _state_collisions(at: str, type_: type[BaseModel]) -> list[Problem]:
    """Fields of an artifact type that the run reads as its own state: ``findings``
    replaces the run's open findings, so it must be a list of ``Finding``."""
    info = type_.model_fields.get("findings")
    if info is None:
        return []
    annotation = _unwrap(info.annotation)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args and args[0] is Finding:
        return []
    return [Problem(at, f"{type_.__name__}.findings is the run's open findings (a step's "
                    "answer with `findings` replaces them), so it must be "
                    "list[swarmbus.Finding]: rename the field")]


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


def _reached(wf: CompiledWorkflow) -> set[str]:
    entry = wf.entry.id
    reached = {entry}
    frontier = [entry]
    while frontier:
        node = frontier.pop()
        for t, _, _ in _targets(wf, wf.steps[node]):
            if t != END and t not in reached:
                reached.add(t)
                frontier.append(t)
    return reached


def available_artifacts(wf: CompiledWorkflow) -> dict[str, set[str]]:
    """Step id -> the artifacts present whenever it runs, on every path that reaches it
    (an empty set for the entry step and for steps never reached). A step's own output
    is in its set only when every path to it passes a step producing it first."""
    index = wf.order
    preds: dict[str, set[str]] = {s: set() for s in index}
    for s in wf.spec.steps:
        for t, _, _ in _targets(wf, s):
            if t != END:
                preds[t].add(s.id)
    entry = wf.entry.id
    reached = _reached(wf)
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
    return {sid: (avail_in[sid] if sid in reached else set()) for sid in index}


def _check_reach_and_inputs(wf: CompiledWorkflow, index: Mapping[str, int]) -> list[Problem]:
    """Steps never reached, and inputs that some path reaches a step without."""
    entry = wf.entry.id
    reached = _reached(wf)
    problems = [Problem(f"steps[{i}]", f"step {sid!r} is never reached from {entry!r}")
                for sid, i in index.items() if sid not in reached]
    every: set[str] = {s.output for s in wf.spec.steps if s.output}
    avail_in = available_artifacts(wf)
    for sid in reached:
        step = wf.steps[sid]
        listed = [step.for_each.partition(".")[0]] if step.for_each else []
        for name in [*step.input, *listed]:
            if name in every and name not in avail_in[sid]:
                problems.append(Problem(f"steps[{index[sid]}].input", f"{name!r} is not produced "
                                        f"on every path to {sid!r}"))
    return problems
