"""Loading workflow files: YAML (long or short form), prompt files, types, presets.

``load_workflow`` turns a file (or ``builtin:<name>``) into a checked
``CompiledWorkflow`` whose prompts are inlined, so the stored graph is
self-contained. Every fault names the file, the path in it and what to change.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from swarmbus.protocols import (
    CompiledWorkflow,
    Message,
    Problem,
    StepSpec,
    UnknownTypeError,
    Workflow,
    WorkflowError,
    check,
    registry,
)

from .._yaml import load_yaml, yaml_problem
from ..models import (
    ModelConfig,
    ModelSpec,
    RouteSpec,
    UnknownModelError,
    check_model,
    qualify_model_name,
)
from ._checks import template_path_problems, tool_problems
from ._prompt import template_problems

__all__ = [
    "BUILTIN_PREFIX",
    "DEFAULT_WORKFLOW",
    "ModelCheck",
    "RolePreset",
    "builtin_workflows",
    "check_models",
    "compile_workflow",
    "load_workflow",
    "resolve_type",
]

BUILTIN_PREFIX = "builtin:"
DEFAULT_WORKFLOW = "builtin:code-review"
_PACKAGE = __package__ or "swarmbus.agents.workflow"
_model_config: TypeAdapter[ModelConfig] = TypeAdapter(ModelConfig)


@dataclass(frozen=True)
class RolePreset:
    """Defaults for a step of a well-known role that leaves them out (the short form)."""

    output: str
    type: str
    prompt: str


PRESETS: dict[str, RolePreset] = {
    "architect": RolePreset("design", "swarmbus.Design", "prompts/architect.md"),
    "coder": RolePreset("code", "swarmbus.Code", "prompts/coder.md"),
    "reviewer": RolePreset("verdict", "swarmbus.Verdict", "prompts/reviewer.md"),
}
"""The built-in team's roles: what a bare ``- role: coder`` step produces, and its prompt."""

KNOWN_TOOLS = frozenset({"sandbox.pytest", "sandbox.contract"})


def builtin_workflows() -> list[str]:
    """The packaged workflows, as ``builtin:<name>``."""
    folder = resources.files(_PACKAGE) / "builtin"
    return sorted(BUILTIN_PREFIX + p.name[:-5] for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def resolve_type(name: str) -> type[BaseModel]:
    """A data type by registered name (``swarmbus.Design``) or import path
    (``pkg.module:Class``). Raises ``UnknownTypeError``."""
    if ":" not in name:
        return registry.resolve_data(name)
    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UnknownTypeError(f"cannot import {name!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or issubclass(cls, Message):
        raise UnknownTypeError(f"{name!r} is not a pydantic model (a data type, not a message)")
    return cls


def _read(source: str) -> tuple[Any, str, Path | None, str]:
    """(data, default name, folder for relative prompt paths, shown name)."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        file = resources.files(_PACKAGE) / "builtin" / f"{name}.yaml"
        if not file.is_file():
            known = ", ".join(builtin_workflows())
            raise WorkflowError(source, [Problem("", f"no such built-in workflow; known: {known}")])
        text, folder = file.read_text(encoding="utf-8"), None
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise WorkflowError(source, [Problem("", f"cannot read it: {e.strerror}")]) from None
        name, folder = path.stem, path.parent
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise WorkflowError(source, [Problem("", f"not valid YAML: {yaml_problem(e)}")]
                            ) from None
    return data, name, folder, source


def _prompt_text(rel: str, folder: Path | None) -> str:
    if folder is None:
        return (resources.files(_PACKAGE) / "builtin" / rel).read_text(encoding="utf-8")
    return (folder / rel).read_text(encoding="utf-8")


def load_workflow(source: str | Path) -> CompiledWorkflow:
    """Load, complete and check a workflow file, or ``builtin:<name>``.

    The import paths it names (``agent: pkg.module:Class``, ``pkg.module:Model``
    types) are found as Python finds them, and also below the current directory and
    the file's own folder (added to the end of ``sys.path``). Raises
    ``WorkflowError`` (a ``ConfigError``) listing every problem with its path in the
    file.
    """
    data, name, folder, shown = _read(str(source))
    for where in (Path.cwd(), folder):
        if where is not None and str(where.resolve()) not in sys.path:
            sys.path.append(str(where.resolve()))
    spec = Workflow.parse(data, default_name=name, source=shown)
    return compile_workflow(spec, folder=folder, source=shown)


def compile_workflow(
    spec: Workflow, *, folder: Path | None = None, source: str = ""
) -> CompiledWorkflow:
    """Fill presets and prompt files into ``spec``, resolve its types, check it."""
    problems: list[Problem] = []
    artifacts = dict(spec.artifacts)
    steps: list[StepSpec] = []
    for i, step in enumerate(spec.steps):
        at = f"steps[{i}]"
        update: dict[str, Any] = {}
        preset = PRESETS.get(step.role)
        output = step.output
        if output is None and preset is not None:
            output = update["output"] = preset.output
        if output and output not in artifacts and preset is not None:
            artifacts[output] = preset.type  # what the role produces, whatever it is named
        prompt = step.prompt
        if step.system is None and prompt is None and preset is not None:
            prompt, folder_for = preset.prompt, None
        else:
            folder_for = folder
        if step.system is None and prompt is not None:
            try:
                update["system"] = _prompt_text(prompt, folder_for)
            except OSError as e:
                problems.append(Problem(f"{at}.prompt", f"cannot read {prompt!r}: {e.strerror}"))
        for key, text in (("task", step.task), ("system", update.get("system", step.system))):
            for why in template_problems(text or "", (step.as_,) if step.for_each else ()):
                problems.append(Problem(f"{at}.{'prompt' if key == 'system' else key}", why))
        if step.model is not None:
            update["model"], why = _model(step.model)
            if why:
                problems.append(Problem(f"{at}.model", why))
        for tool in step.tool_names:
            if tool not in KNOWN_TOOLS:
                problems.append(Problem(f"{at}.tools", f"unknown tool {tool!r}; known: "
                                        f"{', '.join(sorted(KNOWN_TOOLS))}"))
        if step.agent is not None:
            why = _agent_problem(step.agent)
            if why:
                problems.append(Problem(f"{at}.agent", why))
        steps.append(step.model_copy(update=update) if update else step)
    spec = spec.model_copy(update={"steps": steps, "artifacts": artifacts})
    types: dict[str, type[BaseModel]] = {}
    for art, type_name in artifacts.items():
        try:
            types[art] = resolve_type(type_name)
        except UnknownTypeError as e:
            problems.append(Problem(f"artifacts.{art}", str(e)))
    spec = _preset_routes(spec, types)
    problems += check(spec, types)
    problems += tool_problems(spec, types)
    if not problems:  # the paths taken to a step need a graph that checks
        problems += template_path_problems(spec, types)
    if problems:
        raise WorkflowError(source or spec.name, problems)
    return CompiledWorkflow(spec, types)


PRESET_CAPS = {"revise_code": 3, "revise_design": 2}
"""How often a preset reviewer (a short-form ``reviewer`` step without routes) may send
work back to the code's and the design's authors."""


def _preset_routes(spec: Workflow, types: Mapping[str, type[BaseModel]]) -> Workflow:
    """A ``reviewer`` step that gives no ``routes`` and answers a ``swarmbus.Verdict`` gets
    the built-in team's: ``approve`` goes on (to the next step, or ends the run),
    ``revise_code`` back to the step that produced its code input and
    ``revise_design`` back to the one that produced its design input (each capped by
    ``PRESET_CAPS``; the input's own author when it has only one input); and, when it
    reviews code and names no tools, the built-in reviewer's ``sandbox.pytest`` (its
    prompt says it sees the tests run, and the tool never lets it approve failing
    ones)."""
    from swarmbus.protocols import Code, Design, Verdict

    wf = CompiledWorkflow(spec, types)
    steps = []
    for step in spec.steps:
        out_type = types.get(step.output or "")
        if step.role != "reviewer" or step.routes or out_type is not Verdict or not step.input:
            steps.append(step)
            continue

        def author(kind: type[BaseModel], fallback: int, inputs: list[str] = step.input) -> str:
            name = next((n for n in inputs if isinstance(types.get(n), type)
                         and issubclass(types[n], kind)), inputs[fallback])
            producer = wf.producer(name)
            return producer.id if producer is not None else ""

        code, design = author(Code, -1), author(Design, 0)
        if not code or not design:
            steps.append(step)
            continue
        routes = {"approve": {"to": wf.successor(step.id)},
                  "revise_code": {"to": code, "max": PRESET_CAPS["revise_code"]},
                  "revise_design": {"to": design, "max": PRESET_CAPS["revise_design"]}}
        update: dict[str, Any] = {"routes": routes}
        reviews_code = any(isinstance(types.get(n), type) and issubclass(types[n], Code)
                           for n in step.input)
        if reviews_code and not step.tools:
            update["tools"] = ["sandbox.pytest"]
        steps.append(StepSpec.model_validate({**step.model_dump(), **update}))
    return spec.model_copy(update={"steps": steps})


def _model(value: Any) -> tuple[Any, str]:
    """The model config with provider-less names qualified, and a problem (or '')."""
    def qualify(v: Any) -> Any:
        if isinstance(v, str):
            return qualify_model_name(v)
        if isinstance(v, list):
            return [qualify(x) for x in v]
        if isinstance(v, Mapping):
            out = dict(v)
            if isinstance(out.get("name"), str):
                out["name"] = qualify_model_name(out["name"])
            if isinstance(out.get("fallback"), list):
                out["fallback"] = [qualify(x) for x in out["fallback"]]
            return out
        return v

    try:
        qualified = qualify(value)
        _model_config.validate_python(qualified)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        if isinstance(qualified, Mapping) and "route" in qualified:
            try:  # a route: say which of its keys is wrong
                RouteSpec.model_validate(qualified)
            except ValidationError as route_error:
                first = route_error.errors(include_url=False)[0]
                where = ".".join(str(part) for part in first["loc"])
                return value, f"not a valid route: {where}: {first['msg']}"
        if isinstance(qualified, Mapping) and "fallback" not in qualified \
                and "route" not in qualified:
            try:  # a spec: say which of its keys is wrong, not the first union branch's
                ModelSpec.model_validate(qualified)
            except ValidationError as spec_error:
                first = spec_error.errors(include_url=False)[0]
                where = ".".join(str(part) for part in first["loc"])
                return value, f"not a valid model spec: {where}: {first['msg']}"
        return value, f"not a model name, spec or fallback chain: {first['msg']}"
    except ValueError as e:
        return value, str(e)
    return qualified, ""


class ModelCheck(NamedTuple):
    """What ``check_models`` found, each a ``Problem`` at ``steps[i].model``."""

    errors: list[Problem]
    """Models ``build_model`` would refuse: an unknown provider (with the nearest
    known one), a server that needs a ``base_url``."""
    warnings: list[Problem]
    """Models that build and run, but whose calls would be unpriced, or that the
    price table does not list for their vendor (with the nearest id it lists)."""


def check_models(workflow: CompiledWorkflow | Workflow | str | Path) -> ModelCheck:
    """Resolve the models the steps of ``workflow`` name (a workflow, a workflow file,
    or ``builtin:<name>``) as ``build_model`` would, without building them: no key is
    read, no client created (see ``check_model``). ``swarmbus workflow check`` and
    ``swarmbus up`` run it after ``load_workflow``, which leaves model names to
    whoever builds them (``team(..., build=...)`` may know names no provider has).

    Raises ``WorkflowError`` only for a file that does not read or parse; a model
    that is not a name, spec or chain at all is ``load_workflow``'s error, not here.
    """
    if isinstance(workflow, str | Path):
        data, name, _, shown = _read(str(workflow))
        workflow = Workflow.parse(data, default_name=name, source=shown)
    spec = workflow.spec if isinstance(workflow, CompiledWorkflow) else workflow
    found = ModelCheck([], [])
    for i, step in enumerate(spec.steps):
        if step.model is None:
            continue
        qualified, why = _model(step.model)
        if why:
            continue  # not a model config at all: an error of load_workflow
        at = f"steps[{i}].model"
        try:
            warnings = check_model(_model_config.validate_python(qualified))
        except UnknownModelError as e:
            found.errors.append(Problem(at, str(e)))
        else:
            found.warnings.extend(Problem(at, w) for w in warnings)
    return found


def _agent_problem(path: str) -> str:
    module, _, attr = path.partition(":")
    if not attr:
        return f"{path!r}: give 'package.module:Class'"
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        return f"cannot import {path!r}: {e}"
    from ._step import StepAgent

    if not (isinstance(cls, type) and issubclass(cls, StepAgent)):
        return f"{path!r} is not a StepAgent subclass (override its `perform`)"
    return ""
