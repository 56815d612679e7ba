"""Workflows as data: the ``swarmbus.workflow/v1`` format, compiled and checked.

A workflow names its steps (each served by a *role*, the agent type whose
durable consumer takes the step's work), the artifacts they exchange (each of
a registered data type), and the routes between them, with a cap per edge
that loops back. This module is pure: it parses and checks data already
loaded (files, prompt files and import paths are the loader's business, in
``swarmbus.agents``) and knows no particular team.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ._errors import ConfigError
from ._messages import DEFAULT_BUDGET_USD, TaskRequest, WorkState
from ._topics import TASK, step_of_topic, step_topic

__all__ = [
    "END",
    "SCHEMA_ID",
    "CompiledWorkflow",
    "Edge",
    "InputSpec",
    "Problem",
    "StepSpec",
    "ToolSpec",
    "Workflow",
    "WorkflowError",
    "WorkflowLimits",
    "initial_state",
    "step_topic",
    "workflow_json_schema",
]

SCHEMA_ID = "swarmbus.workflow/v1"
END = "end"
"""The route target that ends the workflow (status ``approved``, or the route's ``end``)."""

EndStatus = Literal["approved", "failed"]
"""How a route may end a run (``reject: {end: failed}``)."""

_NAME = r"^[A-Za-z0-9_-]{1,64}$"
_ARTIFACT = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


_NAMES = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_ROUTES = {
    "type": "object",
    "additionalProperties": {"anyOf": [
        {"type": "string"},
        {"type": "object", "properties": {"to": {"type": "string"},
                                          "max": {"type": ["integer", "null"], "minimum": 0}},
         "required": ["to"], "additionalProperties": False},
        {"type": "object", "properties": {"end": {"enum": ["approved", "failed"]}},
         "required": ["end"], "additionalProperties": False},
    ]},
}
_TOOLS = {"type": "array", "items": {"anyOf": [
    {"type": "string"},
    {"type": "object", "properties": {
        "name": {"type": "string"},
        "approve": {"type": "array", "items": {"type": "string"}},
        "on_fail": {"type": "string"}},
     "required": ["name"], "additionalProperties": False},
]}}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a workflow: where (``steps[2].routes.revise_code``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class WorkflowError(ConfigError):
    """A workflow that does not load or does not check; ``problems`` says each fault."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        if len(self.problems) == 1:  # one mistake, one line
            super().__init__(f"invalid workflow {source}: {self.problems[0]}")
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            super().__init__(f"invalid workflow {source}:\n{lines}")


class Edge(BaseModel):
    """A route's target: a step (``to``, with how many times the edge may be taken:
    ``max``, None for no cap), or the end of the run (``to: end``, or ``end: <status>``
    for an end other than ``approved``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    to: str = Field(description="A step id, or 'end'.")
    max: int | None = Field(None, ge=0, description="Times this edge may be taken.")
    end: EndStatus | None = Field(
        None, description="The run's status when this route ends it (default approved).")

    @model_validator(mode="before")
    @classmethod
    def _end_form(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "end" in data and data.get("end") is not None:
            to = data.get("to", END)
            if to != END:
                raise ValueError(f"a route goes to a step or ends the run, not both "
                                 f"(to: {to!r}, end: {data['end']!r})")
            return {**data, "to": END}
        return data

    @property
    def status(self) -> EndStatus:
        """How taking this route ends the run (when ``to`` is ``end``)."""
        return self.end or "approved"


class ToolSpec(BaseModel):
    """A tool a step uses, with its settings (a bare name takes the defaults).

    ``approve``: the route values the tool must agree with (``sandbox.pytest``
    overrules them when the tests fail); default: the values whose route ends the
    run approved. ``on_fail``: the value it answers instead; default: the route back
    to the step that produced the code it tested.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    approve: list[str] | None = None
    on_fail: str | None = None


class InputSpec(BaseModel):
    """A named input of the task beyond ``goal`` (``TaskRequest.inputs``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    default: str | None = Field(None, description="None: the input is required.")


class WorkflowLimits(BaseModel):
    """Defaults for a task's limits (a task's own values win)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_usd: float | None = Field(None, ge=0)
    timeout_s: float | None = Field(None, gt=0)


class StepSpec(BaseModel):
    """One step: a role runs it on a model, from named inputs to one named output.

    A step with ``for_each`` runs once per item of a list (a fan-out); the step with
    ``join`` naming it runs once every item has finished, with the items' results in
    item order under the fan-out's output name (a ``Joined``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str = Field(pattern=_NAME, description="Unique; the topic is step.<id>.")
    role: str = Field(pattern=_NAME, description="The agent type (durable consumer) serving it.")
    model: JsonValue = Field(
        None, description="A model name, a spec, or a fallback chain; default: the role's.")
    task: str = Field("", description="Instructions for this step (a template: {{ inputs.goal }}).")
    prompt: str | None = Field(None, description="A file with the system prompt (a template).")
    system: str | None = Field(None, description="The system prompt text (the loaded `prompt`).")
    input: Annotated[list[str], WithJsonSchema(_NAMES)] = Field(
        default_factory=list, description="Artifact names: a list, or one string 'a + b'.")
    output: str | None = Field(None, pattern=_ARTIFACT, description="The artifact it produces.")
    tools: Annotated[list[str | ToolSpec], WithJsonSchema(_TOOLS)] = Field(
        default_factory=list, description="e.g. sandbox.pytest, or {name, approve, on_fail}.")
    route_on: str = Field("decision", description="The output field whose value picks a route.")
    routes: Annotated[dict[str, Edge], WithJsonSchema(_ROUTES)] = Field(
        default_factory=dict, description="A value of the route_on field -> a step, 'end', "
        "{to, max}, or {end: approved|failed}.")
    next: str | None = Field(None, description="Where to go without routes (default: next step).")
    on_cap: Literal["end_best", "fail"] = Field(
        "end_best", description="A capped edge used up: end with the best attempt, or fail.")
    agent: str | None = Field(None, description="'pkg.module:Class' serving this step.")
    for_each: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}\.[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="'<artifact>.<list field>': run this step once per item of the list.")
    as_: str = Field("item", alias="as", pattern=_ARTIFACT,
                     description="The item's name in this step's templates ({{ item.name }}).")
    max_parallel: int | None = Field(
        None, ge=1, description="Items in flight at once (default: all).")
    max_items: int | None = Field(
        None, ge=1, description="More items than this: the list goes back to its producer "
        "with a finding.")
    rerun: Literal["all", "affected"] = Field(
        "all", description="A later round of a for_each step: run every item again, or "
        "only those the open findings point at (and new or changed ones).")
    revise: Literal["edits", "whole"] | None = Field(
        None, description="A later round of a step whose output is code: answer with edits "
        "(search/replace blocks, changed files only) or every file whole (default: edits).")
    join: str | None = Field(
        None, pattern=_NAME, description="A for_each step: run once all its items finished.")
    min_ok: int | None = Field(
        None, ge=0, description="Items that must succeed for the join to run (default: all); "
        "the others are named as findings.")

    @field_validator("input", mode="before")
    @classmethod
    def _plus(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split("+") if part.strip()]
        return value

    @field_validator("routes", mode="before")
    @classmethod
    def _edges(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): {"to": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _one_tool(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Mapping) else value

    def tool(self, name: str) -> ToolSpec | None:
        """The step's settings of tool ``name``, or None when it does not use it."""
        for t in self.tools:
            spec = ToolSpec(name=t) if isinstance(t, str) else t
            if spec.name == name:
                return spec
        return None

    @property
    def tool_names(self) -> list[str]:
        return [t if isinstance(t, str) else t.name for t in self.tools]


class Workflow(BaseModel):
    """A workflow file (``schema: swarmbus.workflow/v1``).

    The short form (a list of steps under ``workflow:``, ids taken from roles)
    is accepted by ``Workflow.parse``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["swarmbus.workflow/v1"] = Field("swarmbus.workflow/v1", alias="schema")
    name: str = Field(pattern=_NAME)
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    limits: WorkflowLimits = Field(default_factory=WorkflowLimits)
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="Artifact name -> data type (swarmbus.Design).")
    steps: list[StepSpec] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _unique_ids(cls, steps: list[StepSpec]) -> list[StepSpec]:
        seen: set[str] = set()
        for step in steps:
            if step.id in seen:
                raise ValueError(f"two steps have the id {step.id!r}: give each a unique `id`")
            if step.id == END:
                raise ValueError(f"{END!r} is reserved for the end of the workflow")
            seen.add(step.id)
        return steps

    @classmethod
    def parse(cls, data: Any, *, default_name: str = "workflow", source: str = "") -> Workflow:
        """Validate loaded YAML/JSON data, long or short form. Raises ``WorkflowError``."""
        from pydantic import ValidationError

        data = normalize(data, default_name=default_name)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = [
                Problem(_path(err["loc"]), err["msg"].removeprefix("Value error, "))
                for err in e.errors(include_url=False)
            ]
            raise WorkflowError(source or default_name, problems) from None

    def canonical_json(self) -> str:
        """The form that is stored and hashed: sorted keys, and no key at its default, so
        a key added in a later version changes no workflow that does not use it (its
        hash stays, and a daemon of the version before reads it)."""
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_defaults=True),
                          sort_keys=True, separators=(",", ":"))


def workflow_json_schema() -> dict[str, Any]:
    """The JSON Schema of a workflow file, from ``Workflow`` (its single source): the long
    form, or the short form (``workflow:`` with a list of steps whose ``id`` may be left
    out). Editors validate files against it; ``swarmbus schema`` prints it."""
    long = Workflow.model_json_schema(by_alias=True)
    defs = long.pop("$defs", {})
    step = dict(defs["StepSpec"])
    step["required"] = [r for r in step.get("required", []) if r != "id"]
    defs["ShortStep"] = step
    short = {
        "type": "object",
        "title": "Workflow (short form)",
        "properties": {
            "name": long["properties"]["name"],
            "workflow": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/ShortStep"}},
        },
        "required": ["workflow"],
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "swarmbus workflow (swarmbus.workflow/v1)",
        "anyOf": [long, short],
        "$defs": defs,
    }


def normalize(data: Any, *, default_name: str) -> Any:
    """The short form -> the long form: a list of steps (under ``workflow:`` or bare)
    becomes ``steps``; a missing ``id`` is the role (``role-2`` when taken)."""
    if isinstance(data, list):
        data = {"workflow": data}
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "workflow" in data and "steps" not in data:
        data["steps"] = data.pop("workflow")
    data.setdefault("name", default_name)
    steps = data.get("steps")
    if isinstance(steps, list):
        taken: set[str] = {s["id"] for s in steps if isinstance(s, dict) and "id" in s}
        out = []
        for s in steps:
            if isinstance(s, dict) and "id" not in s and isinstance(s.get("role"), str):
                base, n = s["role"], 1
                ident = base
                while ident in taken:
                    n += 1
                    ident = f"{base}-{n}"
                taken.add(ident)
                s = {"id": ident, **s}
            out.append(s)
        data["steps"] = out
    return data


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class CompiledWorkflow:
    """A checked workflow, with what the runtime derives from it.

    ``hash`` names it on the wire (header ``Swarm-Workflow``) and in the
    key-value bucket where it is stored, so a run always follows the graph it
    started with: the hash of its canonical JSON, or ``stored_as``, the key an
    earlier version stored it under (its canonical form may have been another
    text). ``types`` maps artifact names to their pydantic models.
    """

    spec: Workflow
    types: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    stored_as: str = field(default="", compare=False)

    @cached_property
    def hash(self) -> str:
        if self.stored_as:
            return self.stored_as
        return hashlib.sha256(self.spec.canonical_json().encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str:
        return f"{self.spec.name}@{self.hash}"

    @cached_property
    def steps(self) -> dict[str, StepSpec]:
        return {s.id: s for s in self.spec.steps}

    @property
    def entry(self) -> StepSpec:
        return self.spec.steps[0]

    def successor(self, step_id: str) -> str:
        """Where a step without routes goes: its ``next``, else the following step, else end
        (a fan-out step: the step that joins it)."""
        step = self.steps[step_id]
        if step.for_each is not None and step.next is None and step_id in self.joins:
            return self.joins[step_id]
        if step.next is not None:
            return step.next
        order = [s.id for s in self.spec.steps]
        i = order.index(step_id)
        return order[i + 1] if i + 1 < len(order) else END

    @cached_property
    def roles(self) -> dict[str, list[str]]:
        """Role -> the ids of the steps it serves, in workflow order."""
        out: dict[str, list[str]] = {}
        for s in self.spec.steps:
            out.setdefault(s.role, []).append(s.id)
        return out

    def topics(self, role: str) -> list[str]:
        """The topics ``role``'s durable consumer takes: its steps, and ``task`` for the entry."""
        topics = [step_topic(s) for s in self.roles.get(role, [])]
        if self.entry.role == role:
            topics.insert(0, TASK)
        return topics

    def role_of_topic(self, topic: str) -> str | None:
        """Which role works on a message on ``topic`` (None: no step of this workflow)."""
        if topic == TASK:
            return self.entry.role
        step_id = step_of_topic(topic)
        if step_id is not None:
            step = self.steps.get(step_id)
            return step.role if step else None
        return None

    def consumer(self, role: str) -> str:
        """The durable consumer of ``role``'s steps in this workflow (any version of it):
        ``<role>@<workflow name>``."""
        return f"{role}@{self.name}"

    @cached_property
    def order(self) -> dict[str, int]:
        """Step id -> its position in the file."""
        return {s.id: i for i, s in enumerate(self.spec.steps)}

    def sends_back(self, source: str, target: str) -> bool:
        """Whether a route from step ``source`` to ``target`` sends work back: to a step
        at or before ``source`` in the file's order (a loop)."""
        return target != END and self.order[target] <= self.order[source]

    def producer(self, artifact: str) -> StepSpec | None:
        """The first step that produces ``artifact`` (None: no step does)."""
        return next((s for s in self.spec.steps if s.output == artifact), None)

    def to_json(self) -> str:
        """The stored form: the spec (prompts inlined) and its artifact type names."""
        return self.spec.canonical_json()

    @cached_property
    def joins(self) -> dict[str, str]:
        """Fan-out step id -> the id of the step that joins it."""
        return {s.join: s.id for s in self.spec.steps if s.join is not None}

    @cached_property
    def read_types(self) -> dict[str, type[BaseModel]]:
        """Artifact name -> its type as the run's state holds it: a fan-out step's output
        is its items' results, ``Joined[<type>]``; any other artifact its own type."""
        from ._fanout import Joined

        out = dict(self.types)
        for s in self.spec.steps:
            if s.for_each is not None and s.output and s.output in self.types:
                out[s.output] = Joined[self.types[s.output]]  # type: ignore[name-defined]
        return out


def initial_state(
    task: TaskRequest, workflow: CompiledWorkflow | None, stored_at: datetime | None = None
) -> WorkState:
    """The state of a run of ``workflow`` for ``task`` before any step ran: the limits in
    force (the task's, else the workflow's, else the defaults), the deadline counted
    from submission (``task.submitted_at``, else ``stored_at``, the stream's time of
    the task, else now) and the inputs' defaults filled in."""
    submitted = task.submitted_at or stored_at or datetime.now(UTC)
    limits = task.limits
    defaults = workflow.spec.limits if workflow is not None else WorkflowLimits()
    deadline = limits.deadline_from(submitted, defaults.timeout_s)
    budget = limits.budget_usd if limits.budget_usd is not None else (
        defaults.budget_usd if defaults.budget_usd is not None else DEFAULT_BUDGET_USD)
    if workflow is not None:
        inputs = {k: spec.default for k, spec in workflow.spec.inputs.items()
                  if spec.default is not None and k not in task.inputs}
        if inputs:
            task = task.model_copy(update={"inputs": {**inputs, **task.inputs}})
    return WorkState(task=task, workflow=workflow.hash if workflow is not None else "",
                     round=1, deadline=deadline, budget_usd=budget, caps=limits.route_caps(),
                     send_back_caps=limits.send_back_caps())
