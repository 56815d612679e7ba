"""``swarmbus route eval``: the command line of ``swarmbus.agents.routing``'s evaluation.
Routing is imported only when the command runs (it needs the ``route`` extra)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import yaml

from swarmbus.protocols import ConfigError

__all__ = ["add_route_parser", "cmd_route"]


def add_route_parser(sub: Any) -> Any:
    """Add ``route`` and its ``eval`` sub-command to the ``swarmbus`` parser's
    sub-parsers; returns ``route``'s own sub-parsers, for more sub-commands."""
    p = sub.add_parser("route", help="routers that pick each step's model per task")
    rsub = p.add_subparsers(dest="action", required=True)
    e = rsub.add_parser(
        "eval", help="compare the learned routers with the baselines and the oracle on "
        "held-out runs split by time (pass rate and cost per task, bootstrap 95% intervals)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("rows", nargs="?", help="outcome rows (JSONL, as `swarmbus route export` "
                     "writes them)")
    src.add_argument("--synthetic", action="store_true",
                     help="seeded synthetic tasks and three scripted models (no keys, no "
                     "network)")
    e.add_argument("--seed", type=int, default=0, help="synthetic tasks and bootstrap (default 0)")
    e.add_argument("--tasks", type=int, default=2000,
                   help="synthetic tasks (default 2000; each is run on every model)")
    e.add_argument("--rules", help="the rule router's rules: a YAML list, as in a workflow's "
                   "`route: {rules: ...}` (default: synthetic's rules, or always the best)")
    e.add_argument("--willingness-to-pay", type=float, default=1.0, metavar="USD",
                   help="USD one more approved run is worth (default 1.0): the learned "
                   "routers maximise p_success - cost / this")
    e.add_argument("--train-share", type=float, default=0.7,
                   help="share of the earliest runs to train on (default 0.7)")
    e.add_argument("--plot", metavar="PNG", help="also write the cost-pass-rate frontier here")
    return rsub


def _rules(path: str | None) -> list[Any] | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"--rules {path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--rules {path}: not YAML ({e})") from None
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    if not isinstance(data, list):
        raise ConfigError(f"--rules {path}: give a YAML list of rules, the last without `if`")
    return data


async def cmd_route(args: argparse.Namespace) -> int:
    """Run ``swarmbus route eval``: print the table (and write the plot). Mistakes
    and a missing extra raise ``ConfigError`` (exit 2)."""
    from ..routing import (
        SYNTHETIC_RULES,
        evaluate_routers,
        plot_frontier,
        read_outcomes,
        report_table,
        synthetic_rows,
    )

    if args.tasks < 20:
        raise ConfigError(f"--tasks {args.tasks}: at least 20 (train and test need some each)")
    wtp = args.willingness_to_pay
    if not wtp > 0 or math.isnan(wtp):
        raise ConfigError(f"--willingness-to-pay {wtp}: must be > 0 (USD per approved run)")
    rules = _rules(args.rules)
    if args.synthetic:
        rows = synthetic_rows(args.tasks, seed=args.seed)
        rules = rules if rules is not None else SYNTHETIC_RULES
        print(f"synthetic: {args.tasks} tasks (seed {args.seed}), each run on every model")
    else:
        rows = read_outcomes(args.rows)
        if not rows:
            raise ConfigError(f"{args.rows}: no outcome rows")
    report = evaluate_routers(rows, rules=rules, willingness_to_pay_usd=wtp,
                              train_share=args.train_share, seed=args.seed)
    print(report_table(report), end="")
    if args.plot:
        try:
            print(f"wrote {plot_frontier(report, args.plot)}")
        except OSError as e:
            raise ConfigError(f"--plot {args.plot}: cannot write ({e.strerror})") from None
    return 0
