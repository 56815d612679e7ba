"""The comparison as text, and the cost-pass-rate frontier as a PNG."""

from __future__ import annotations

import math
from pathlib import Path

from ._eval import ROW_NAMES, RouteReport, should_activate
from ._extras import require

__all__ = ["plot_frontier", "report_table"]

_HEAD = ("router", "pass rate [95% CI]", "cost per task [95% CI]",
         "cost at 95% of best's pass rate")


def _usd(x: float) -> str:
    return f"${x:.4f}"


def report_table(report: RouteReport) -> str:
    """A header (split, sizes, best, target), the table with rows ``learned``,
    ``knn``, ``rule``, ``random``, ``cheapest``, ``best``, ``oracle`` (pass rate and
    cost per task in USD, each with its bootstrap 95% interval, and the cost per task
    at which the router reaches 95% of best's pass rate, "not reached" otherwise),
    and the activation verdict of each learned router."""
    cut = report.cut.isoformat() if report.cut else "-"
    lines = [
        f"candidates: {', '.join(report.candidates)}; best (training): {report.best}",
        f"train: {report.train_rows} rows before {cut}; test: {report.test_tasks} tasks with "
        f"every candidate's outcome ({report.dropped} dropped for a missing one)",
        f"willingness to pay: ${report.willingness_to_pay_usd:g} per approved run; target: "
        f"{report.target:.1%} (95% of best's pass rate); bootstrap seed {report.seed}",
        "",
    ]
    cells = []
    for name in ROW_NAMES:
        r = report.results[name]
        cells.append((name,
                      f"{r.pass_rate:.1%} [{r.pass_ci[0]:.1%}, {r.pass_ci[1]:.1%}]",
                      f"{_usd(r.cost_per_task)} [{_usd(r.cost_ci[0])}, {_usd(r.cost_ci[1])}]",
                      "not reached" if r.cost_at_target is None else _usd(r.cost_at_target)))
    widths = [max(len(row[i]) for row in [_HEAD, *cells]) for i in range(len(_HEAD))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    lines += [line(_HEAD), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(c) for c in cells]
    lines.append("")
    for name in ("learned", "knn"):
        lines.append(f"{name}: {should_activate(report, name)[1]}")
    return "\n".join(lines) + "\n"


def plot_frontier(report: RouteReport, path: str | Path) -> Path:
    """Write a PNG to ``path``: x cost per task (USD, log scale), y pass rate; a line
    for each learned router's willingness-to-pay sweep, a point (with its bootstrap
    interval) for every row of the table, and the 95%-of-best target as a dashed
    line. matplotlib's object API (no pyplot). Raises ``MissingExtraError`` without
    the ``plot`` extra, ``OSError`` when ``path`` cannot be written."""
    figure_mod = require("matplotlib.figure", "plot", "swarmbus route eval --plot")
    fig = figure_mod.Figure(figsize=(7.0, 5.0), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    markers = "osD^vP*"
    for i, name in enumerate(ROW_NAMES):
        r = report.results[name]
        if r.frontier:
            pts = sorted((c, p) for _, c, p in r.frontier)
            ax.plot([c for c, _ in pts], [p for _, p in pts], "-", alpha=0.6, color=f"C{i}",
                    label=f"{name} (willingness-to-pay sweep)")
        err = [[r.pass_rate - r.pass_ci[0]], [r.pass_ci[1] - r.pass_rate]]
        ax.errorbar([r.cost_per_task], [r.pass_rate], yerr=err, fmt=markers[i], capsize=4,
                    markersize=7, color=f"C{i}",
                    label=f"{name}: {r.pass_rate:.1%}, {_usd(r.cost_per_task)}")
    ax.axhline(report.target, linestyle="--", color="grey", linewidth=1,
               label=f"95% of best ({report.target:.1%})")
    costs = [c for r in report.results.values() for c in
             [r.cost_per_task, *(c for _, c, _ in r.frontier)] if c > 0 and math.isfinite(c)]
    if costs:
        ax.set_xscale("log")
    fig.legend(loc="outside lower center", fontsize=7, ncols=2, frameon=False)
    ax.set_xlabel("cost per task (USD)")
    ax.set_ylabel("pass rate (bootstrap 95% interval)")
    ax.grid(True, alpha=0.3)
    ax.set_title("swarmbus route eval: pass rate against cost per task")
    out = Path(path)
    fig.savefig(out, format="png")
    return out
