"""Outcome rows: one per (workflow run, step, model), what routers learn from and
are judged on. ``swarmbus route export`` writes them from the stream; the synthetic
generator writes them too."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarmbus.protocols import ConfigError

from ._features import Features

__all__ = ["OutcomeRow", "read_outcomes", "write_outcomes"]


class OutcomeRow(BaseModel):
    """How one step of one run went on one model.

    ``at``: when the run ended (timezone-aware; the time split orders by it);
    ``workflow_id``/``workflow``/``step``: which run, workflow and step; ``model``:
    the ``provider:model`` that ran the step; ``features``: what the router saw at
    the step's first call; ``approved``: the run was approved within its round cap;
    ``rounds``: rounds the run took; ``cost_usd``: this step's spend in the run
    (USD; None: unpriced); ``latency_s``: this step's model time (seconds);
    ``propensity``: the routing decision's ``probability`` when a router picked the
    model (None: the model was configured, or the row comes from an eval run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    workflow_id: str = Field(min_length=1)
    workflow: str
    step: str
    model: str = Field(min_length=1)
    features: Features
    approved: bool
    rounds: int = Field(ge=0)
    cost_usd: float | None = Field(ge=0)
    latency_s: float = Field(ge=0)
    propensity: float | None = Field(default=None, gt=0, le=1)


def write_outcomes(rows: Iterable[OutcomeRow], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` as JSONL (one object a line, UTF-8), replacing it.
    Raises ``OSError`` when it cannot be written."""
    out = Path(path)
    with out.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(r.model_dump_json() + "\n")
    return out


def read_outcomes(path: str | Path) -> list[OutcomeRow]:
    """The rows of a JSONL file (blank lines skipped). Raises ``ConfigError`` naming
    the file and line of the first bad row, or a file that cannot be read."""
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read ({e.strerror})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(OutcomeRow.model_validate(json.loads(line)))
        except ValueError as e:
            if isinstance(e, ValidationError):
                err = e.errors(include_url=False)[0]
                what = f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            else:
                what = f"not JSON ({e})"
            raise ConfigError(f"{source}:{n}: {what} (one OutcomeRow per line, as "
                              "`swarmbus route export` writes)") from None
    return rows
