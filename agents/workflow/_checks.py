"""The checks of a workflow that need more than its graph: the tools' settings, and the
names its templates read (each template path against the inputs, the artifacts
produced on every path to the step, and their types' fields)."""

from __future__ import annotations

import difflib
import types as types_
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from swarmbus.protocols import CompiledWorkflow, Problem, Workflow

from ._prompt import template_paths

__all__ = ["template_path_problems", "tool_problems"]


def tool_problems(spec: Workflow, types: Mapping[str, type[BaseModel]]) -> list[Problem]:
    """``sandbox.pytest`` needs a code input to test and, on a step with routes, a route
    to send failing code back on (``on_fail``) and approving values that are routes."""
    from swarmbus.protocols import Code

    from ._tools import send_back_value

    wf = CompiledWorkflow(spec, types)
    out = []
    for i, step in enumerate(spec.steps):
        tool = step.tool("sandbox.pytest")
        if tool is None:
            continue
        code = next((n for n in step.input if isinstance(types.get(n), type)
                     and issubclass(types[n], Code)), None)
        if code is None:
            out.append(Problem(f"steps[{i}].tools", "sandbox.pytest runs the tests of a code "
                               "input: give the step an input of type swarmbus.Code"))
            continue
        if not step.routes:
            continue
        on_fail = tool.on_fail or send_back_value(wf, step, code)
        if on_fail is None:
            out.append(Problem(f"steps[{i}].tools", f"sandbox.pytest sends failing code back, "
                               f"but no route of step {step.id!r} goes to the step that "
                               f"produces {code!r}: add one, or give the tool `on_fail`"))
        elif on_fail not in step.routes:
            out.append(Problem(f"steps[{i}].tools", f"on_fail {on_fail!r} is not a route of "
                               f"step {step.id!r} ({', '.join(step.routes)})"))
        for value in tool.approve or []:
            if value not in step.routes:
                out.append(Problem(f"steps[{i}].tools", f"approve {value!r} is not a route of "
                                   f"step {step.id!r} ({', '.join(step.routes)})"))
    return out


def template_path_problems(
    spec: Workflow, types: Mapping[str, type[BaseModel]]
) -> list[Problem]:
    """Every name a step's templates read exists whenever the step runs: ``inputs.X`` is
    the goal, the constraints, the language or a declared input (all text: nothing
    below them); ``round``, ``role`` and ``step`` are plain values; ``artifacts.X`` is
    an artifact produced on every path to the step, and each name after it a field
    of the type before it. A near name is suggested."""
    from swarmbus.protocols import TASK_FIELDS, available_artifacts, list_item_type

    wf = CompiledWorkflow(spec, types)
    read = wf.read_types
    available = available_artifacts(wf)
    inputs = [*sorted(TASK_FIELDS), *spec.inputs]
    out: list[Problem] = []
    for i, step in enumerate(spec.steps):
        for key, text in (("task", step.task), ("prompt", step.system or "")):
            if "{" not in text:
                continue
            extra = (step.as_,) if step.for_each else ()
            for path in template_paths(text, extra):
                where, shown = f"steps[{i}].{key}", "{{ " + ".".join(path) + " }}"
                if extra and path[0] == step.as_:
                    art, _, field = (step.for_each or "").partition(".")
                    why = _field_problem(path, list_item_type(types.get(art), field))
                else:
                    why = _path_problem(path, inputs, spec, read, available[step.id], step.id)
                if why:
                    out.append(Problem(where, f"{shown}: {why}"))
    return out


def _path_problem(path: tuple[str, ...], inputs: list[str], spec: Workflow,
                  types: Mapping[str, type[BaseModel]], available: set[str],
                  step: str) -> str:
    """What is wrong with one template path ('' when nothing is)."""
    root = path[0]
    if root in ("round", "role", "step", "findings") and len(path) > 1:
        kind = "a list of findings" if root == "findings" else "a plain value"
        return f"{root} is {kind}: it has no {path[1]!r}"
    if root == "inputs" and len(path) > 1:
        if path[1] not in inputs:
            return (f"no input {path[1]!r}{_near(path[1], inputs)}; inputs are "
                    f"{', '.join(inputs)}")
        if len(path) > 2:
            return f"inputs.{path[1]} is text: it has no {path[2]!r}"
    if root != "artifacts" or len(path) < 2:
        return ""
    name = path[1]
    if name not in spec.artifacts:
        known = list(spec.artifacts)
        return (f"no artifact {name!r}{_near(name, known)}; artifacts are "
                f"{', '.join(known) or 'none'}")
    if name not in available:
        return (f"artifact {name!r} is not produced on every path to step {step!r} (the "
                "first time it runs, at least)")
    return _field_problem(path[1:], types.get(name))


def _field_problem(path: tuple[str, ...], annotation: Any) -> str:
    """What is wrong with reading the fields ``path[1:]`` of a value of type
    ``annotation`` (named ``path[0]``); '' when nothing is (or the type is unknown)."""
    if annotation is None:
        return ""
    for depth, field_name in enumerate(path[1:], start=1):
        owner = ".".join(path[:depth])
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            if typing.get_origin(annotation) in (dict, Mapping) or annotation is Any:
                return ""  # any key may be there
            return f"{owner} is not an object with fields: it has no {field_name!r}"
        fields = list(annotation.model_fields)
        if field_name not in annotation.model_fields:
            return (f"{annotation.__name__} has no field {field_name!r}"
                    f"{_near(field_name, fields)}; its fields are {', '.join(fields)}")
        annotation = _unwrap_optional(annotation.model_fields[field_name].annotation)
    return ""


def _unwrap_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types_.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _near(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
