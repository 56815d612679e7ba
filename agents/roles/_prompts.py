"""Prompt files next to the roles, and how the work state is shown to a model."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources

from swarmbus.protocols import TestReport, WorkState

__all__ = ["render_state", "system_prompt"]


@cache
def system_prompt(role: str) -> str:
    return (resources.files(__package__) / "prompts" / f"{role}.md").read_text(encoding="utf-8")


def _block(title: str, body: str) -> str:
    return f"## {title}\n\n{body.strip()}\n"


def render_state(state: WorkState, *, for_role: str) -> str:
    """The work so far, as the next role needs to read it."""
    task = state.task
    parts = [_block("Goal", task.goal)]
    if task.constraints:
        parts.append(_block("Constraints", "\n".join(f"- {c}" for c in task.constraints)))
    parts.append(_block("Language", task.language))
    if state.design is not None:
        parts.append(_block("Current design", state.design.model_dump_json(indent=2)))
    if state.code is not None and for_role != "architect":
        files = "\n\n".join(f"### {f.path}\n```\n{f.content}\n```" for f in state.code.files)
        notes = f"\n\nNotes: {state.code.notes}" if state.code.notes else ""
        parts.append(_block("Current code", files + notes))
    mine = [f for f in state.findings if for_role == "reviewer" or f.target == for_role]
    if mine:
        body = json.dumps([f.model_dump() for f in mine], indent=2)
        parts.append(_block("Findings from the reviewer (address each)", body))
    if state.test_report is not None and for_role != "architect":
        parts.append(_block("Test report", _report(state.test_report)))
    parts.append(
        _block("Round", f"{state.round} (code revisions {state.code_revisions}, "
               f"design revisions {state.design_revisions})")
    )
    return "\n".join(parts)


# pytest ends its summary with the run's wall time ("1 passed in 0.08s"). Left in, it
# would change the reviewer's request, so its cache key, on every run: a redelivered
# review would pay the model again for the answer it already has.
_DURATION = re.compile(r" in \d+(?:\.\d+)?s(?: \(\d+:\d\d:\d\d\))?(?=[ =]*$)", re.M)


def _report(r: TestReport) -> str:
    head = (
        f"exit code {r.exit_code}, passed {r.passed}, failed {r.failed}, errors {r.errors}"
        + (", TIMED OUT" if r.timed_out else "")
    )
    failed = "\n".join(f"- {name}" for name in r.failed_tests)
    output = _DURATION.sub("", r.output)
    return f"{head}\n{failed}\n\nOutput:\n```\n{output}\n```"
