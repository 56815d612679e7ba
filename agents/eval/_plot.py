"""Pass rate against cost per task: one point per arm, with its Wilson interval."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._extras import require
from ._stats import ArmSummary

__all__ = ["plot_pass_vs_cost"]


def plot_pass_vs_cost(summaries: Sequence[ArmSummary], path: str | Path) -> Path:
    """Write a PNG to ``path``: x the mean cost per task (USD; an arm with unpriced
    calls is drawn hollow at its lower bound, one whose cost is unknown at 0 with
    "cost unknown"), y pass@1 with its Wilson 95% interval as error bars, each
    point labelled with its arm. Uses matplotlib's object API (no pyplot, no
    global state). Raises ``MissingExtraError`` without the ``plot`` extra,
    ``ValueError`` when there is nothing to plot."""
    figure_mod = require("matplotlib.figure", "plot", "swarmbus eval plot")
    if not summaries:
        raise ValueError("no arm to plot")
    fig = figure_mod.Figure(figsize=(7.0, 4.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    for s in summaries:
        x = s.cost_mean if s.cost_mean is not None else 0.0
        err = [[s.pass_at_1 - s.ci_low], [s.ci_high - s.pass_at_1]]
        hollow = s.unpriced_calls > 0 or s.cost_mean is None
        ax.errorbar([x], [s.pass_at_1], yerr=err, fmt="o", capsize=4,
                    markerfacecolor="none" if hollow else None)
        note = " (cost unknown)" if s.cost_mean is None else (
            " (>= cost: unpriced calls)" if s.unpriced_calls else "")
        ax.annotate(f"{s.arm}{note}", (x, s.pass_at_1), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    ax.set_xlabel("mean cost per task (USD)")
    ax.set_ylabel("pass@1 (Wilson 95% interval)")
    ax.set_ylim(-0.02, 1.05)
    widest = max((s.cost_mean or 0.0 for s in summaries), default=0.0) or 0.01
    ax.set_xlim(-0.06 * widest, 1.3 * widest)  # room for the labels, points off the axis
    ax.grid(True, alpha=0.3)
    ax.set_title("swarmbus eval: pass rate against cost per task")
    out = Path(path)
    fig.savefig(out, format="png")
    return out
