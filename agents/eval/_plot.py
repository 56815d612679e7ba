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
    "cost unknown"), y pass@1 with its Wilson 95% interval as error bars, one
    marker per arm, named in a legend below the axes. Uses matplotlib's object API (no pyplot, no
    global state). Raises ``MissingExtraError`` without the ``plot`` extra,
    ``ValueError`` when there is nothing to plot, ``OSError`` when ``path`` cannot
    be written."""
    figure_mod = require("matplotlib.figure", "plot", "swarmbus eval plot")
    if not summaries:
        raise ValueError("no arm to plot")
    fig = figure_mod.Figure(figsize=(7.0, 5.0), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    markers = "osD^vP*Xhp<>"
    for i, s in enumerate(summaries):
        x = s.cost_mean if s.cost_mean is not None else 0.0
        err = [[s.pass_at_1 - s.ci_low], [s.ci_high - s.pass_at_1]]
        hollow = s.unpriced_calls > 0 or s.cost_mean is None
        note = " (cost unknown)" if s.cost_mean is None else (
            " (>= cost: unpriced calls)" if s.unpriced_calls else
            " (~ cost: estimated tokens)" if s.estimated_calls else "")
        # A legend, not labels at the points: arms at one spot, or with long names,
        # stay readable.
        ax.errorbar([x], [s.pass_at_1], yerr=err, fmt=markers[i % len(markers)], capsize=4,
                    markersize=7, markerfacecolor="none" if hollow else None,
                    label=f"{s.arm}{note}: {s.pass_at_1:.0%}")
    fig.legend(loc="outside lower center", fontsize=8, ncols=1 if len(summaries) < 4 else 2,
               frameon=False)
    ax.set_xlabel("mean cost per task (USD)")
    ax.set_ylabel("pass@1 (Wilson 95% interval)")
    ax.set_ylim(-0.02, 1.05)
    widest = max((s.cost_mean or 0.0 for s in summaries), default=0.0) or 0.01
    ax.set_xlim(-0.06 * widest, 1.1 * widest)  # points off the axes' edges
    ax.grid(True, alpha=0.3)
    ax.set_title("swarmbus eval: pass rate against cost per task")
    out = Path(path)
    fig.savefig(out, format="png")
    return out
