"""What a step's model reads: the system prompt (a template) and the work so far.

Templates are Jinja2 in a sandboxed environment with strict undefined names:
``{{ inputs.goal }}``, ``{{ inputs.<name> }}``, ``{{ artifacts.<name>.<field> }}``,
``{{ findings }}``, ``{{ round }}``, ``{{ role }}``, ``{{ step }}``, and in a
``for_each`` step its item (``{{ item }}``, or the name its ``as`` gives). Values are
inserted as text, never evaluated as templates. Hidden acceptance tests are
never rendered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel

from swarmbus.protocols import Code, Finding, Joined, StepSpec, TestReport, WorkItem, WorkState

from ..models import Part

__all__ = [
    "TEMPLATE_NAMES",
    "PromptError",
    "render_system",
    "render_work",
    "report_text",
    "steady",
    "template_paths",
    "template_problems",
    "work_parts",
]

TEMPLATE_NAMES = frozenset({"inputs", "artifacts", "findings", "round", "role", "step"})


class _Environment(SandboxedEnvironment):
    """Artifacts and inputs are JSON objects: ``{{ artifacts.x.items }}`` is the field
    ``items``, never the dict's method of that name (``keys``, ``values``, ``get``...)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_env = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class PromptError(ValueError):
    """A template that does not render (an undefined name, a sandbox violation)."""


@lru_cache(maxsize=512)
def _template(text: str) -> Any:
    return _env.from_string(text)


def template_problems(text: str, extra: Collection[str] = ()) -> list[str]:
    """Syntax errors and names a template uses that no step context defines (``extra``:
    names this step's context adds, a fan-out's item)."""
    try:
        parsed = _env.parse(text)
        _env.from_string(text)  # an unknown filter or test fails here, not in parse
    except TemplateError as e:
        return [f"template error: {e}"]
    known = TEMPLATE_NAMES | set(extra)
    unknown = sorted(meta.find_undeclared_variables(parsed) - known)
    if unknown:
        return [f"unknown template names {unknown}; use {sorted(known)}"]
    return []


@lru_cache(maxsize=512)
def template_paths(text: str, extra: tuple[str, ...] = ()) -> tuple[tuple[str, ...], ...]:
    """The names a template reads, as paths: ``{{ artifacts.outline.summary }}`` is
    ``("artifacts", "outline", "summary")``, ``{{ inputs['goal'] }}`` is
    ``("inputs", "goal")``; only the longest path of each use, only names of
    ``TEMPLATE_NAMES``, and none through a method call. Raises ``TemplateError`` for a
    template that does not parse."""
    found: list[tuple[str, ...]] = []

    def chain(node: nodes.Node) -> tuple[str, ...] | None:
        if isinstance(node, nodes.Name):
            return (node.name,)
        if isinstance(node, nodes.Getattr):
            base = chain(node.node)
            return None if base is None else (*base, node.attr)
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(
                node.arg.value, str):
            base = chain(node.node)
            return None if base is None else (*base, node.arg.value)
        return None

    def walk(node: nodes.Node, parent: nodes.Node | None) -> None:
        path = chain(node) if isinstance(node, nodes.Name | nodes.Getattr | nodes.Getitem) \
            else None
        outer = isinstance(parent, nodes.Getattr | nodes.Getitem) and chain(parent) is not None
        if path is not None and not outer and (
                path[0] in TEMPLATE_NAMES or path[0] in extra) and not (
                isinstance(parent, nodes.Call) and parent.node is node):
            found.append(path)
        for child in node.iter_child_nodes():
            walk(child, node)

    walk(_env.parse(text), None)
    return tuple(dict.fromkeys(found))


def _context(state: WorkState, step: StepSpec, artifacts: Mapping[str, Any] | None = None,
             item: WorkItem | None = None) -> dict[str, Any]:
    task = state.task
    inputs = {"goal": task.goal, "constraints": task.constraints, "language": task.language,
              **task.inputs}
    out: dict[str, Any] = {
           "inputs": inputs, "artifacts": state.artifacts if artifacts is None else artifacts,
           "findings": state.findings, "round": state.round, "role": step.role,
           "step": step.id}
    if step.for_each is not None:
        out[step.as_] = item.value if item is not None else None
    return out


def render(text: str, state: WorkState, step: StepSpec,
           artifacts: Mapping[str, Any] | None = None, item: WorkItem | None = None) -> str:
    """``text`` rendered for ``step`` (``artifacts``: every artifact as templates see it,
    references read; default ``state.artifacts``). Raises ``PromptError``."""
    if "{" not in text:  # most prompts are plain text: skip the template engine
        return text
    try:
        return str(_template(text).render(_context(state, step, artifacts, item)))
    except Exception as e:  # a template fails the same way every time: never retried
        raise PromptError(f"step {step.id!r}: prompt template: {type(e).__name__}: {e}") from e


def render_system(step: StepSpec, state: WorkState, *,
                  artifacts: Mapping[str, Any] | None = None, item: WorkItem | None = None,
                  ) -> str:
    """The step's system prompt (its ``prompt`` file or preset), rendered."""
    text = step.system or f"You are the {step.role} of a team of agents."
    return render(text, state, step, artifacts, item)


def _block(title: str, body: str) -> str:
    return f"## {title}\n\n{body.strip()}\n"


def _show(value: BaseModel) -> str:
    if isinstance(value, Joined):
        return "\n\n".join(
            f"### Item {r.key}: " + (_show(r.value) if r.ok and isinstance(r.value, BaseModel)
                                     else f"did not succeed ({r.reason})")
            for r in value.items) or "(no items)"
    if isinstance(value, Code):
        files = "\n\n".join(f"### {f.path}\n```\n{f.content}\n```" for f in value.files)
        return files + (f"\n\nNotes: {value.notes}" if value.notes else "")
    return value.model_dump_json(indent=2)


def render_work(
    step: StepSpec,
    state: WorkState,
    inputs: Mapping[str, BaseModel],
    previous: BaseModel | None,
    *,
    show_report: bool,
    all_findings: bool,
    artifacts: Mapping[str, Any] | None = None,
    item: WorkItem | None = None,
) -> str:
    """The user message: goal and inputs, the step's instructions, its item (a
    fan-out's), its input artifacts, its own previous output, the findings it must
    address, the facts."""
    return "".join(p.text for p in work_parts(
        step, state, inputs, previous, show_report=show_report, all_findings=all_findings,
        artifacts=artifacts, item=item))


def work_parts(
    step: StepSpec,
    state: WorkState,
    inputs: Mapping[str, BaseModel],
    previous: BaseModel | None,
    *,
    show_report: bool,
    all_findings: bool,
    artifacts: Mapping[str, Any] | None = None,
    item: WorkItem | None = None,
    steady: tuple[str, ...] | None = None,
    answer: str = "",
) -> list[Part]:
    """``render_work``'s message as sections, what stays the same first: the task and
    the step's instructions (the same every round), the ``steady`` inputs (those that
    reach the step's next round unchanged), then what changes each round: the other
    inputs and their last changes, the step's previous output, findings, test
    reports, the round, and ``answer`` (how to answer). With ``steady`` given (None:
    the step never runs twice), a cache breakpoint ends the task's sections and the
    steady inputs."""
    task = state.task
    fixed = [_block("Goal", task.goal)]
    if task.constraints:
        fixed.append(_block("Constraints", "\n".join(f"- {c}" for c in task.constraints)))
    if task.language:
        fixed.append(_block("Language", task.language))
    for name, text in task.inputs.items():
        fixed.append(_block(f"Input: {name}", text))
    if step.task:
        fixed.append(_block("Instructions", render(step.task, state, step, artifacts, item)))
    if item is not None:
        fixed.append(_block(f"Your item: {item.key} ({item.index + 1} of {item.total})",
                            json.dumps(item.value, indent=2)))
    kept = [n for n in inputs if steady is not None and n in steady]
    lasting = [_block(f"Current {n}", _show(inputs[n])) for n in kept]
    parts = [_block(f"Current {n}", _show(v)) for n, v in inputs.items() if n not in kept]
    parts += [_block(f"Changes to {n} in its last revision", f"```diff\n{state.diffs[n]}```")
              for n in inputs if n not in kept and state.diffs.get(n)]
    if previous is not None and step.output:
        parts.append(_block(f"Your previous {step.output}", _show(previous)))
    mine = [f for f in state.findings if all_findings or _targets(f, step)]
    if mine:
        body = json.dumps([f.model_dump(mode="json") for f in mine], indent=2)
        parts.append(_block("Findings to address (each one)", body))
    if show_report and state.test_report is not None:
        parts.append(_block(
            "Test report (from running the submitted tests in the sandbox; the counts "
            "are reported by the submitter's own test process)", report_text(state.test_report)))
    if state.acceptance is not None:
        a = state.acceptance
        verdict = "passed" if a.ok else "FAILED"
        parts.append(_block("Hidden acceptance tests", f"{verdict}: {a.passed} passed, "
                            f"{a.failed} failed, {a.errors} errors (their code is not shown)"))
    revisions = ", ".join(f"{k} {v}" for k, v in sorted(state.edges.items())) or "none yet"
    parts.append(_block("Round", f"{state.round} (send-backs: {revisions})"))
    if answer:
        parts.append(_block("How to answer", answer))
    texts = [*fixed, *lasting, *parts]
    ends = {len(fixed) - 1, len(fixed) + len(lasting) - 1} if steady is not None else set()
    return [Part(text=t + ("\n" if i < len(texts) - 1 else ""), cache=i in ends)
            for i, t in enumerate(texts)]


def _targets(finding: Finding, step: StepSpec) -> bool:
    target = finding.target.strip().lower()
    return target in (step.role.lower(), step.id.lower())


# pytest ends its summary with the run's wall time ("1 passed in 0.08s"). Left in, it
# would change the reviewer's request, so its cache key, on every run: a redelivered
# review would pay the model again for the answer it already has.
_DURATION = re.compile(r" in \d+(?:\.\d+)?s(?: \(\d+:\d\d:\d\d\))?(?=[ =]*$)", re.M)
# The sandbox's note on how the run was isolated is about the host, not the submission,
# and can differ between two runs of the same code (a cgroup that could not be made under
# load): left in, a redelivered review would ask anew and pay twice.
_ISOLATION = re.compile(r"^\[sandbox\] isolation: .*\n?", re.M)
# What differs between two runs of the same code and says nothing about it: memory
# addresses in reprs (<A object at 0x7f94...>), the names of temporary folders
# (tempfile's tmpXXXXXXXX) and the clock's seconds since the epoch (2020-2033). Left in,
# a redelivered review of failing code would miss the response cache and pay again.
_VOLATILE = (
    (re.compile(r"\b0x[0-9a-fA-F]{6,16}\b"), "0x…"),
    (re.compile(r"(?<=/)tmp[A-Za-z0-9_]{8}\b"), "tmp…"),
    (re.compile(r"(?<![\d.])1[6-9]\d{8}\.\d+"), "<time>"),
)


def steady(text: str) -> str:
    """``text`` without what two runs of the same code write differently."""
    for pattern, stand_in in _VOLATILE:
        text = pattern.sub(stand_in, text)
    return text


def report_text(r: TestReport) -> str:
    """The test report as a model reads it: the counts, the failing tests and the output,
    without what differs between two runs of the same code (the wall time, the
    isolation note, addresses, temporary folder names, epoch times)."""
    head = (
        f"exit code {r.exit_code}, passed {r.passed}, failed {r.failed}, errors {r.errors}"
        + (", TIMED OUT" if r.timed_out else "")
    )
    if r.self_reported:
        head += (
            "\n(The counts, the failing test names and the output come from the submission's"
            " own process, which could forge them; the timeout, limits hit and a kill by"
            " signal are observed from outside.)"
        )
    if r.limits_hit:
        head += f"\nLimits enforced by the sandbox: {', '.join(r.limits_hit)}"
    failed = "\n".join(f"- {steady(name)}" for name in r.failed_tests)
    output = steady(_ISOLATION.sub("", _DURATION.sub("", r.output))).rstrip("\n")
    return f"{head}\n{failed}\n\nOutput:\n```\n{output}\n```"
