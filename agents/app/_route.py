"""``swarmbus route export | eval | train``: the swarm's outcomes as rows, the comparison
of routers with the baselines, and training a router that goes live only when it wins.
Routing is imported only when the command runs (it needs the ``route`` extra)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from swarmbus.protocols import ConfigError

__all__ = ["add_route_parser", "cmd_route"]


MAX_ROUTER_BYTES = 1024 * 1024
"""The largest router JSON stored (a NATS message's default limit, 1 MiB)."""


def add_route_parser(sub: Any, client_args: Callable[[argparse.ArgumentParser], None]) -> Any:
    """Add ``route`` and its ``export``, ``eval`` and ``train`` sub-commands to the
    ``swarmbus`` parser's sub-parsers (``client_args`` adds --nats, --namespace, -c);
    returns ``route``'s own sub-parsers."""
    p = sub.add_parser("route", help="routers that pick each step's model per task")
    rsub = p.add_subparsers(dest="action", required=True)
    x = rsub.add_parser("export", help="one row per (run, step, model) with its features and "
                        "outcome, from the namespace's stream (JSONL)")
    client_args(x)
    x.add_argument("-o", "--out", default="-", help="file to write (default: stdout)")
    x.add_argument("--k-rounds", type=int, default=3, help="a run counts as a success when "
                   "approved within this many rounds (default 3)")
    t = rsub.add_parser("train", help="train a router on exported rows, compare it with the "
                        "rule router on held-out runs, and store it only when it wins")
    client_args(t)
    t.add_argument("rows", help="outcome rows (JSONL, from `swarmbus route export`)")
    t.add_argument("--name", required=True, help="the router's name, as a workflow's "
                   "`route: {router: NAME}` gives it")
    t.add_argument("--kind", choices=["learned", "knn"], default="learned",
                   help="learned: a calibrated classifier per candidate (default); knn")
    t.add_argument("--rules", help="the rule router it must beat: a YAML list, as in the "
                   "workflow (default: always the best)")
    t.add_argument("--willingness-to-pay", type=float, default=1.0, metavar="USD")
    t.add_argument("--train-share", type=float, default=0.7)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-rows-per-candidate", type=int, default=200,
                   help="knn keeps each model's latest rows only (its JSON grows ~1 KB a row)")
    t.add_argument("--step", help="train on this step's rows only (rows of other steps have "
                   "other candidates)")
    t.add_argument("--activate", action="store_true",
                   help="store it in the namespace (running daemons pick it up) if it wins")
    e = rsub.add_parser(
        "eval", help="compare the learned routers with the baselines and the oracle on "
        "held-out runs split by time (pass rate and cost per task, bootstrap 95%% intervals)")
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
    """Run ``swarmbus route export | eval | train``. Mistakes and a missing extra raise
    ``ConfigError`` (exit 2); ``train --activate`` of a router that does not win is
    refused (exit 1)."""
    if args.action == "export":
        return await _export(args)
    if args.action == "train":
        return await _train(args)
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


async def _export(args: argparse.Namespace) -> int:
    from ..routing import write_outcomes
    from ..workflow import outcome_rows
    from ._commands import client, config

    if args.k_rounds < 1:
        raise ConfigError(f"--k-rounds {args.k_rounds}: at least 1")
    async with await client(config(args)) as c:
        rows = await outcome_rows(c.bus, k_rounds=args.k_rounds)
    if args.out == "-":
        for r in rows:
            sys.stdout.write(r.model_dump_json() + "\n")
    else:
        write_outcomes(rows, args.out)
        print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0


async def _train(args: argparse.Namespace) -> int:
    from ..routing import (
        evaluate_routers,
        read_outcomes,
        report_table,
        should_activate,
        train_knn,
        train_logistic,
    )
    from ..workflow import ROUTERS_BUCKET
    from ._commands import client, config

    rows = read_outcomes(args.rows)
    if args.step is not None:
        rows = [r for r in rows if r.step == args.step]
    if not rows:
        raise ConfigError(f"{args.rows}: no outcome rows"
                          + (f" of step {args.step!r}" if args.step else ""))
    try:
        report = evaluate_routers(rows, rules=_rules(args.rules),
                                  willingness_to_pay_usd=args.willingness_to_pay,
                                  train_share=args.train_share, seed=args.seed)
    except ConfigError as e:  # nothing to score it on: it cannot be shown to win
        ok, why = False, f"not activated: it cannot be compared: {e}"
        print(f"{args.kind}: {why}")
    else:
        print(report_table(report), end="")  # ends with each learned router's verdict
        ok, why = should_activate(report, args.kind)
    if not args.activate:
        print(f"nothing stored (this was a trial): add --activate to store {args.kind!r} "
              f"as {args.name!r} when it is activated")
        return 0
    if not ok:
        print(f"error: {args.name!r} is not stored: {why}", file=sys.stderr)
        return 1
    router = (train_logistic(rows, seed=args.seed) if args.kind == "learned"
              else train_knn(rows, max_rows_per_candidate=args.max_rows_per_candidate))
    text = router.to_json().encode()
    if len(text) > MAX_ROUTER_BYTES:
        raise ConfigError(f"the router's JSON is {len(text):,} bytes, above the "
                          f"{MAX_ROUTER_BYTES:,} a message holds: lower "
                          "--max-rows-per-candidate, or use --kind learned")
    async with await client(config(args)) as c:
        store = await c.bus.key_value(ROUTERS_BUCKET)
        await store.put(args.name, text)
    print(f"stored router {args.name!r} ({router.name} {router.version}, {len(text):,} "
          "bytes): running daemons use it from their next decision")
    return 0
