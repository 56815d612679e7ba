"""``swarmbus route eval``: routers against the baselines and the oracle on held-out
tasks, split by time, with bootstrap intervals, and the cost at which each reaches
95% of always-best's pass rate.

Missing counterfactuals: a router can only be scored on a task where the model it
would pick was run. So test tasks are those with one outcome of *every* candidate
(eval runs, or synthetic data); other test tasks are dropped and counted
(``RouteReport.dropped``). No inverse-propensity estimate is made here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from swarmbus.protocols import ConfigError

from ._baselines import BestRouter, CheapestRouter, Rule, RuleRouter
from ._features import Features
from ._knn import smoothed_rate, train_knn
from ._logistic import train_logistic
from ._np import Indices, Vector, np
from ._router import Candidate, Router
from ._rows import OutcomeRow

__all__ = ["MIN_ROWS_PER_CANDIDATE", "MIN_TEST_TASKS", "ROW_NAMES", "RouteReport",
           "RouterResult", "evaluate_routers", "should_activate", "task_key", "time_split"]

ROW_NAMES = ("learned", "knn", "rule", "random", "cheapest", "best", "oracle")
# 50 rows per candidate: a candidate's pass rate is then known to about +-0.14 (95%)
# before any per-task signal, and each outcome has enough rows for Platt scaling on
# 3 folds in all but lopsided data. 30 test tasks: fewer make the bootstrap interval
# too coarse to separate two routers.
MIN_ROWS_PER_CANDIDATE = 50
MIN_TEST_TASKS = 30
TARGET_SHARE = 0.95
_BOOT = 2000


@dataclass(frozen=True)
class _Task:
    """One held-out (run, step): its features and every candidate's (approved, USD)."""

    at: datetime
    features: Features
    outcome: dict[str, tuple[bool, float]]


@dataclass
class RouterResult:
    """One row of the table. ``passed``/``cost``: per test task (expected values for
    ``random``), shape (n,); ``pass_rate``/``cost_per_task`` their means with
    bootstrap 95% intervals ``*_ci`` (USD per task); ``cost_at_target``: the lowest
    cost per task at which it reaches 95% of always-best's pass rate (over the
    willingness-to-pay sweep for learned routers; None: not reached); ``frontier``:
    (willingness to pay USD, cost per task, pass rate) points; ``share``: how often
    it picked each candidate."""

    name: str
    passed: Vector
    cost: Vector
    pass_rate: float = 0.0
    pass_ci: tuple[float, float] = (0.0, 0.0)
    cost_per_task: float = 0.0
    cost_ci: tuple[float, float] = (0.0, 0.0)
    cost_at_target: float | None = None
    frontier: list[tuple[float, float, float]] = field(default_factory=list)
    share: dict[str, float] = field(default_factory=dict)


@dataclass
class RouteReport:
    """The comparison. ``candidates`` in order; ``best`` the model of the highest
    training pass rate; ``willingness_to_pay_usd`` the learned routers' setting;
    ``train_rows``/``rows_per_candidate`` what they learned from; ``test_tasks`` the
    held-out tasks scored, ``dropped`` those lacking a candidate's outcome; ``cut``
    the time split; ``target`` 95% of best's pass rate; ``results`` by row name;
    ``utility_gain`` per learned router: its mean utility per task minus the rule
    router's (p - cost / willingness to pay), with the paired bootstrap 95% interval."""

    candidates: list[str]
    best: str
    willingness_to_pay_usd: float
    train_rows: int
    rows_per_candidate: dict[str, int]
    test_tasks: int
    dropped: int
    cut: datetime | None
    target: float
    seed: int
    results: dict[str, RouterResult]
    utility_gain: dict[str, tuple[float, float, float]]


def task_key(row: OutcomeRow) -> tuple[str, tuple[str, ...]]:
    """What makes two rows the same task: its goal and constraints (eval runs give one
    problem several runs, one per model, each under its own workflow id)."""
    return row.features.goal, tuple(row.features.constraints)


def time_split(rows: Sequence[OutcomeRow], train_share: float = 0.7
               ) -> tuple[list[OutcomeRow], list[OutcomeRow], datetime | None]:
    """(train, test, cut): tasks (``task_key``) ordered by their earliest ``at``, the
    first ``train_share`` of them to train, the rest to test; a task's rows, all its
    runs and steps, stay on one side. Never random: a goal asked again later must not
    leak its outcome from one side to the other. ``cut``: the first test task's time."""
    if not 0.0 < train_share < 1.0:
        raise ConfigError(f"--train-share {train_share}: between 0 and 1 (exclusive)")
    first: dict[tuple[str, tuple[str, ...]], datetime] = {}
    for r in rows:
        key = task_key(r)
        first[key] = min(first.get(key, r.at), r.at)
    tasks = sorted(first, key=lambda t: (first[t], t))
    n_train = int(len(tasks) * train_share)
    train_keys = set(tasks[:n_train])
    cut = first[tasks[n_train]] if n_train < len(tasks) else None
    return ([r for r in rows if task_key(r) in train_keys],
            [r for r in rows if task_key(r) not in train_keys], cut)


def _complete(test: Sequence[OutcomeRow], candidates: Sequence[str]) -> tuple[list[_Task], int]:
    """Test tasks, one per (task, step), with a priced outcome of every candidate (the
    latest row of each model wins); and how many were dropped."""
    grouped: dict[tuple[Any, str], list[OutcomeRow]] = {}
    for r in sorted(test, key=lambda r: r.at):
        grouped.setdefault((task_key(r), r.step), []).append(r)
    tasks, dropped = [], 0
    for rs in grouped.values():
        outcome = {r.model: (r.approved, r.cost_usd) for r in rs if r.cost_usd is not None}
        if all(m in outcome for m in candidates):
            tasks.append(_Task(rs[0].at, rs[0].features,
                               {m: (bool(outcome[m][0]), float(outcome[m][1] or 0.0))
                                for m in candidates}))
        else:
            dropped += 1
    return tasks, dropped


def _greedy_picks(p: Vector, c: Vector, wtp: float) -> Indices:
    """argmax of p - c / wtp per row; ties to the lower cost, then the earlier one
    (as ``pick_best``), shape (n,) of candidate indices."""
    u = p if math.isinf(wtp) else p - c / wtp
    order = np.broadcast_to(np.arange(p.shape[1]), p.shape)
    picks: Indices = np.lexsort((order, c, -u), axis=-1)[:, 0]
    return picks


def _outcomes(tasks: Sequence[_Task], names: Sequence[str]) -> tuple[Vector, Vector]:
    ok = np.array([[t.outcome[m][0] for m in names] for t in tasks], dtype=np.float64)
    cost = np.array([[t.outcome[m][1] for m in names] for t in tasks], dtype=np.float64)
    return ok, cost


def _fill(res: RouterResult, idx: Indices, target: float) -> RouterResult:
    """Means, bootstrap percentile intervals (same resamples for every router), and
    the cost at the target for a single point."""
    res.pass_rate, res.cost_per_task = float(res.passed.mean()), float(res.cost.mean())
    boot_p, boot_c = res.passed[idx].mean(axis=1), res.cost[idx].mean(axis=1)
    res.pass_ci = (float(np.percentile(boot_p, 2.5)), float(np.percentile(boot_p, 97.5)))
    res.cost_ci = (float(np.percentile(boot_c, 2.5)), float(np.percentile(boot_c, 97.5)))
    points = res.frontier or [(math.nan, res.cost_per_task, res.pass_rate)]
    reached = [cost for _, cost, p in points if p >= target - 1e-12]
    res.cost_at_target = min(reached) if reached else None
    return res


def evaluate_routers(rows: Sequence[OutcomeRow], *, rules: Sequence[Rule | dict[str, Any]]
                     | None = None, willingness_to_pay_usd: float = 1.0,
                     train_share: float = 0.7, seed: int = 0,
                     candidates: Sequence[str] | None = None) -> RouteReport:
    """Train ``learned`` (logistic) and ``knn`` on the earliest ``train_share`` of tasks
    and score them, ``rule`` (``rules``; None: always best), ``random`` (at the share
    of ``learned``'s picks), ``cheapest`` (lowest mean training cost), ``best``
    (highest training pass rate) and ``oracle`` (per task the cheapest candidate that
    passed; the cheapest one when none did) on the later tasks that have a priced
    outcome of every candidate (``candidates``; None: every model in ``rows``).
    ``seed`` fixes the bootstrap. Needs scikit-learn; raises ``ConfigError`` when
    there are no rows, no training rows, or no complete test task."""
    train, test, cut = time_split(rows, train_share)
    names = sorted(candidates or {r.model for r in rows})
    if not train:
        raise ConfigError("route eval: no training rows before the time cut (more runs?)")
    tasks, dropped = _complete(test, names)
    if not tasks:
        raise ConfigError(f"route eval: none of the {dropped} held-out tasks has an outcome "
                          f"of every candidate ({', '.join(names)}): run them on every "
                          "candidate (eval runs) to compare routers")
    per = {m: [r for r in train if r.model == m] for m in names}
    priced = {m: [r.cost_usd for r in rs if r.cost_usd is not None] for m, rs in per.items()}
    mean_cost = {m: sum(cs) / len(cs) if cs else None for m, cs in priced.items()}
    cands = [Candidate(model=m, price_hint_usd=mean_cost[m]) for m in names]
    best = max(names, key=lambda m: (smoothed_rate(sum(r.approved for r in per[m]),
                                                   len(per[m])), -(mean_cost[m] or 0.0)))
    ok, cost = _outcomes(tasks, names)
    n = len(tasks)
    rows_idx = np.arange(n)
    idx = np.random.default_rng(seed).integers(0, n, size=(_BOOT, n))
    target = TARGET_SHARE * float(ok[:, names.index(best)].mean())
    results: dict[str, RouterResult] = {}
    utilities: dict[str, Vector] = {}
    scale = float(np.median(cost)) or 1.0
    sweep = [*(scale * 10.0 ** e for e in np.linspace(-2, 4, 49)), math.inf]
    learned: list[tuple[str, Router]] = [("learned", train_logistic(train, seed=seed)),
                                         ("knn", train_knn(train))]
    for name, router in learned:
        p, c = router.score_matrix([t.features for t in tasks], cands)
        frontier = []
        for wtp in sorted({*sweep, willingness_to_pay_usd}):
            pick = _greedy_picks(p, c, wtp)
            frontier.append((wtp, float(cost[rows_idx, pick].mean()),
                             float(ok[rows_idx, pick].mean())))
        pick = _greedy_picks(p, c, willingness_to_pay_usd)
        res = RouterResult(name, ok[rows_idx, pick], cost[rows_idx, pick], frontier=frontier,
                           share={m: float((pick == j).mean()) for j, m in enumerate(names)})
        results[name] = res
    fixed: list[tuple[str, Router]] = [
        ("rule", RuleRouter(rules or [{"use": best}], names)),
        ("cheapest", CheapestRouter()), ("best", BestRouter(best))]
    for name, router in fixed:
        pick = np.array([names.index(router.greedy(t.features, cands,
                                                   router.score(t.features, cands)))
                         for t in tasks])
        results[name] = RouterResult(name, ok[rows_idx, pick], cost[rows_idx, pick],
                                     share={m: float((pick == j).mean())
                                            for j, m in enumerate(names)})
    share = np.array([results["learned"].share[m] for m in names])
    results["random"] = RouterResult("random", ok @ share, cost @ share,
                                     share=dict(zip(names, share.tolist(), strict=True)))
    cheapest_ok = np.where(ok > 0, cost, np.inf)
    oracle = np.where(ok.any(axis=1), cheapest_ok.argmin(axis=1), cost.argmin(axis=1))
    results["oracle"] = RouterResult("oracle", ok[rows_idx, oracle], cost[rows_idx, oracle],
                                     share={m: float((oracle == j).mean())
                                            for j, m in enumerate(names)})
    for res in results.values():
        _fill(res, idx, target)
        utilities[res.name] = res.passed - res.cost / willingness_to_pay_usd
    gain = {}
    for name in ("learned", "knn"):
        d = utilities[name] - utilities["rule"]
        boot = d[idx].mean(axis=1)
        gain[name] = (float(d.mean()), float(np.percentile(boot, 2.5)),
                      float(np.percentile(boot, 97.5)))
    return RouteReport(candidates=names, best=best,
                       willingness_to_pay_usd=willingness_to_pay_usd, train_rows=len(train),
                       rows_per_candidate={m: len(per[m]) for m in names}, test_tasks=n,
                       dropped=dropped, cut=cut, target=target, seed=seed,
                       results={k: results[k] for k in ROW_NAMES}, utility_gain=gain)


def should_activate(report: RouteReport, router: str = "learned") -> tuple[bool, str]:
    """Whether ``router`` ("learned" or "knn") may replace the rule router, and why.

    Yes only when every candidate has at least ``MIN_ROWS_PER_CANDIDATE`` training
    rows, at least ``MIN_TEST_TASKS`` held-out tasks were scored, and its mean
    utility per task (pass - cost / willingness to pay) beats the rule router's with
    the paired bootstrap 95% interval of the difference (same resampled tasks)
    entirely above 0. A label-accuracy figure plays no part."""
    if router not in report.utility_gain:
        raise ConfigError(f"should_activate: {router!r} is not a learned router (learned, knn)")
    short = {m: n for m, n in report.rows_per_candidate.items() if n < MIN_ROWS_PER_CANDIDATE}
    if short:
        listed = ", ".join(f"{m} has {n}" for m, n in sorted(short.items()))
        return False, (f"not activated: too little data ({listed} training rows; at least "
                       f"{MIN_ROWS_PER_CANDIDATE} per candidate needed)")
    if report.test_tasks < MIN_TEST_TASKS:
        return False, (f"not activated: {report.test_tasks} held-out tasks with every "
                       f"candidate's outcome, at least {MIN_TEST_TASKS} needed")
    mean, lo, hi = report.utility_gain[router]
    what = (f"utility per task {mean:+.4f} vs the rule router, 95% interval "
            f"[{lo:+.4f}, {hi:+.4f}] at willingness to pay ${report.willingness_to_pay_usd:g}")
    if lo > 0:
        return True, f"activated: {what}"
    return False, f"not activated: {what} does not lie above 0"
