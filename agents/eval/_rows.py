"""The raw results: one JSON line per (task, arm, repeat) in ``results.jsonl``, so
anyone can recompute every figure of the table; and lines per function, by ``ast``."""

from __future__ import annotations

import ast
import os
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarmbus.protocols import ConfigError, SourceFile, TestReport, Usage, UtcDatetime

__all__ = [
    "INTERRUPTED_FILE",
    "RESULTS_FILE",
    "AcceptanceOutcome",
    "EvalRow",
    "InterruptedRun",
    "StepModel",
    "append_interrupted",
    "append_rows",
    "function_lengths",
    "is_test_file",
    "lines_per_function",
    "read_interrupted",
    "read_rows",
]

RESULTS_FILE = "results.jsonl"
INTERRUPTED_FILE = "interrupted.jsonl"
_Line = TypeVar("_Line", bound=BaseModel)


class StepModel(BaseModel):
    """A step that ran, in order, and the model that answered it (None: no model)."""

    model_config = ConfigDict(frozen=True)

    step: str
    model: str | None = None


class AcceptanceOutcome(BaseModel):
    """The harness's own run of the hidden tests on the final code (``run_acceptance``)."""

    model_config = ConfigDict(frozen=True)

    ok: bool = Field(description="Exit code 0, a test passed, none failed, and the token.")
    passed: int = 0
    failed: int = 0
    errors: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    token_verified: bool = False
    limits_hit: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, report: TestReport) -> AcceptanceOutcome:
        return cls(ok=report.ok, passed=report.passed, failed=report.failed,
                   errors=report.errors, exit_code=report.exit_code, timed_out=report.timed_out,
                   token_verified=report.token_verified, limits_hit=list(report.limits_hit))


class EvalRow(BaseModel):
    """One run of one problem by one arm.

    ``passed``: the harness's acceptance run of the final code was ``ok`` (False
    when there was no code, or the run timed out). ``status``: how the workflow
    ended (``approved``, ``rounds_exhausted``, ...; ``no_result`` when none came
    within the task's timeout). Money in USD from ``TaskResult.total``, as in
    ``Usage``: ``priced_cost_usd`` sums priced calls, ``cost_usd`` is the whole
    cost, null when ``unpriced_calls`` > 0; ``estimated_calls`` had no usage
    figures. Tokens as in ``Usage``: ``input_tokens`` includes ``cached_tokens``
    (input read from the provider's prompt cache) and ``cache_write_tokens``
    (input written to it); rows written before these existed read 0. ``wall_s``:
    seconds from submission to the result. ``rounds``: ``TaskResult.rounds``.
    ``lines_per_function``: median over the solution's functions (``function_lengths``).
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    task: str
    arm: str
    repeat: int = Field(ge=0)
    passed: bool
    status: str
    reason: str = ""
    cost_usd: float | None = Field(0.0, ge=0)
    priced_cost_usd: float = Field(0.0, ge=0)
    calls: int = 0
    unpriced_calls: int = 0
    estimated_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    wall_s: float = Field(ge=0)
    rounds: int = 0
    steps: list[StepModel] = Field(default_factory=list)
    lines_per_function: float | None = None
    acceptance: AcceptanceOutcome | None = None
    solution: str | None = Field(None, description="The final solution.py, if any.")
    oracle_feedback: bool = False
    namespace: str = ""
    workflow_id: str = ""
    finished_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="before")
    @classmethod
    def _whole_cost(cls, data: Any) -> Any:
        return Usage.with_whole_cost(data) if isinstance(data, dict) else data

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.task, self.arm, self.repeat)

    @property
    def usage(self) -> Usage:
        """This run's calls, tokens and cost as a ``Usage``."""
        return Usage(priced_cost_usd=self.priced_cost_usd, calls=self.calls,
                     unpriced_calls=self.unpriced_calls, estimated_calls=self.estimated_calls,
                     input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                     cached_tokens=self.cached_tokens,
                     cache_write_tokens=self.cache_write_tokens)

    @classmethod
    def spend_of(cls, total: Usage | None) -> dict[str, Any]:
        """The fields of a row that ``total`` (a run's ``TaskResult.total``) fills:
        every ``Usage`` field the row has (none when there is no total)."""
        return total.model_dump(include=_SPEND_FIELDS) if total is not None else {}


_SPEND_FIELDS = set(Usage.model_fields) & set(EvalRow.model_fields)


class InterruptedRun(BaseModel):
    """A run stopped (Ctrl-C) before it had its row, and what its workflow had spent
    by then: the running total on its last message in the stream, a lower bound (a
    call in flight at the stop is not in it; see ``Usage`` for what is priced). A
    resume runs its (task, arm, repeat) again; this money stays spent, so it counts
    in the run's spend and budget. One JSON line of ``out/interrupted.jsonl``."""

    model_config = ConfigDict(frozen=True, extra="allow")

    task: str
    arm: str
    repeat: int = Field(ge=0)
    workflow_id: str
    spent: Usage
    stopped_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))


def read_rows(out: str | Path) -> list[EvalRow]:
    """The rows in ``out/results.jsonl`` (none if it does not exist).

    A last line cut short by a crash (no newline, not JSON) is dropped from the
    file; any other bad line raises ``ConfigError`` with its number."""
    return _read_lines(Path(out) / RESULTS_FILE, EvalRow, "a result row")


def read_interrupted(out: str | Path) -> list[InterruptedRun]:
    """The runs stopped before their rows, from ``out/interrupted.jsonl`` (none if it
    does not exist); bad lines as in ``read_rows``."""
    return _read_lines(Path(out) / INTERRUPTED_FILE, InterruptedRun, "an interrupted run")


def append_rows(out: str | Path, rows: Iterable[EvalRow]) -> None:
    """Append ``rows`` to ``out/results.jsonl``, flushed to disk (a resumed run keeps them)."""
    _append_lines(Path(out) / RESULTS_FILE, rows)


def append_interrupted(out: str | Path, runs: Iterable[InterruptedRun]) -> None:
    """Append ``runs`` to ``out/interrupted.jsonl``, flushed to disk."""
    _append_lines(Path(out) / INTERRUPTED_FILE, runs)


def _read_lines(path: Path, kind: type[_Line], what: str) -> list[_Line]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    out: list[_Line] = []
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(kind.model_validate_json(line))
        except ValidationError as e:
            if n == len(lines) and not text.endswith("\n"):  # a write cut short
                with path.open("r+b") as f:
                    f.truncate(len(text.encode()) - len(line.encode()))
                break
            first = e.errors(include_url=False)[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"{path}:{n}: not {what}: {where + ': ' if where else ''}"
                              f"{first['msg']}; fix or remove that line") from None
    return out


def _append_lines(path: Path, items: Iterable[BaseModel]) -> None:
    data = "".join(item.model_dump_json() + "\n" for item in items)
    with path.open("a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def is_test_file(path: str) -> bool:
    """pytest's default test files (``test_*.py``, ``*_test.py``) and ``conftest.py``."""
    name = path.rsplit("/", 1)[-1]
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"


def function_lengths(source: str) -> list[int]:
    """Lines of code of each function (sync or async, nested ones too) in ``source``:
    the physical lines from its ``def`` to its last line, not counting its
    docstring, blank lines or comment-only lines (a nested function's lines count in
    its parent too). Empty when ``source`` does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    text = source.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        end = node.end_lineno or node.lineno
        skip: set[int] = set()
        first = node.body[0] if node.body else None
        if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            skip = set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
        count = 0
        for n in range(node.lineno, end + 1):
            line = text[n - 1].strip() if n - 1 < len(text) else ""
            if n not in skip and line and not line.startswith("#"):
                count += 1
        out.append(count)
    return out


def lines_per_function(files: Sequence[SourceFile]) -> float | None:
    """The median of ``function_lengths`` over every function of the non-test Python
    files of a solution (None: no function)."""
    lengths = [n for f in files if f.path.endswith(".py") and not is_test_file(f.path)
               for n in function_lengths(f.content)]
    return float(statistics.median(lengths)) if lengths else None

