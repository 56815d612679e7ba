"""The k-nearest-neighbours router: a task is likely to pass on a model where similar
past tasks passed on it. A well-tuned kNN router matches or beats learned ones on
routing benchmarks (Li et al., arXiv 2505.12601); here the neighbours are the
swarm's own outcome rows, compared by cosine over hashed features (``vectorize``)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from swarmbus.protocols import ConfigError

from ._features import DIM, Features, vectorize
from ._np import Vector, np
from ._router import Candidate, Router, Score, fill_unknown_costs, with_utility
from ._rows import OutcomeRow

__all__ = ["SCHEMA", "KnnRouter", "body_version", "train_knn"]

SCHEMA = "swarmbus.router/v1"


def body_version(body: dict[str, Any]) -> str:
    """A version that names the content: blake2b-96 of the canonical JSON of ``body``
    (its ``version`` key left out), so the same training data gives the same version."""
    text = json.dumps({k: v for k, v in body.items() if k != "version"}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def smoothed_rate(passed: float, n: float) -> float:
    """Laplace's rule of succession, (passed + 1) / (n + 2): 0.5 with no data."""
    return (passed + 1.0) / (n + 2.0)


class _Rows:
    """One candidate's training rows as a dense (n, dim) matrix of unit vectors."""

    def __init__(self, data: dict[str, Any], dim: int) -> None:
        n = len(data["ok"])
        self.x = np.zeros((n, dim), dtype=np.float64)
        for r, (idx, val) in enumerate(zip(data["i"], data["v"], strict=True)):
            self.x[r, idx] = val
        self.ok = np.asarray(data["ok"], dtype=np.float64)
        cost = [math.nan if c is None else c for c in data["cost"]]
        self.cost = np.asarray(cost, dtype=np.float64)
        self.prior = smoothed_rate(float(self.ok.sum()), n)
        known = self.cost[~np.isnan(self.cost)]
        self.mean_cost = float(known.mean()) if known.size else None


class KnnRouter(Router):
    """Per candidate, the ``k`` training rows of that model most similar to the task
    (cosine of ``vectorize``d features; negative similarities weigh 0) vote:
    p_success = (sum w*approved + s * prior) / (sum w + s), with the candidate's
    own smoothed pass rate as ``prior`` and ``s`` = ``smoothing``; cost = the
    neighbours' similarity-weighted mean cost (USD), else the candidate's mean, else
    its ``price_hint_usd``. A candidate with no training row gets the pooled pass rate
    of all rows and its price hint. Numpy only; ``to_json``/``load_router`` carry it."""

    name = "knn"

    def __init__(self, body: dict[str, Any]) -> None:
        if body.get("schema") != SCHEMA or body.get("kind") != "knn":
            raise ConfigError(f"not a kNN router ({body.get('schema')}, {body.get('kind')})")
        self.body = body
        self.dim = int(body["dim"])
        self.k = int(body["k"])
        self.smoothing = float(body["smoothing"])
        self.version = str(body["version"])
        self.models = {m: _Rows(d, self.dim) for m, d in body["models"].items()}
        total = sum(r.ok.size for r in self.models.values())
        self.pooled = smoothed_rate(sum(float(r.ok.sum()) for r in self.models.values()), total)

    def to_json(self) -> str:
        """The router as JSON text (no pickle): schema, kind, version, dim, k,
        smoothing, and each model's rows as sparse vectors with outcome and cost."""
        return json.dumps(self.body, separators=(",", ":"))

    def _batch(self, rows: _Rows | None, v: Vector, hint: float | None
               ) -> tuple[Vector, Vector]:
        """p_success and cost (NaN: unknown) for each row of ``v`` (n, dim)."""
        n = v.shape[0]
        if rows is None or rows.ok.size == 0:
            return np.full(n, self.pooled), np.full(n, math.nan if hint is None else hint)
        sims = v @ rows.x.T
        near = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]
        w = np.clip(np.take_along_axis(sims, near, axis=1), 0.0, None)
        p = ((w * rows.ok[near]).sum(axis=1) + self.smoothing * rows.prior) / (
            w.sum(axis=1) + self.smoothing)
        cost = rows.cost[near]
        known = ~np.isnan(cost)
        wk = np.where(known, w, 0.0)
        weighted = np.where(known, cost, 0.0)
        fallback = rows.mean_cost if rows.mean_cost is not None else (
            math.nan if hint is None else hint)
        with np.errstate(invalid="ignore", divide="ignore"):
            by_weight = (wk * weighted).sum(axis=1) / wk.sum(axis=1)
            plain = weighted.sum(axis=1) / known.sum(axis=1)
        c = np.where(wk.sum(axis=1) > 0, by_weight,
                     np.where(known.any(axis=1), plain, fallback))
        return p, c

    def score_matrix(self, tasks: Sequence[Features], candidates: Sequence[Candidate]
                     ) -> tuple[Vector, Vector]:
        v = np.stack([vectorize(f, self.dim) for f in tasks])
        cols = [self._batch(self.models.get(c.model), v, c.price_hint_usd) for c in candidates]
        p = np.stack([pc[0] for pc in cols], axis=1)
        c = np.stack([pc[1] for pc in cols], axis=1)
        return p, fill_unknown_costs(c)

    def score(self, features: Features, candidates: Sequence[Candidate], *,
              willingness_to_pay_usd: float = math.inf) -> dict[str, Score]:
        v = vectorize(features, self.dim)[None, :]
        out = {}
        for cand in candidates:
            p, c = self._batch(self.models.get(cand.model), v, cand.price_hint_usd)
            cost = None if math.isnan(c[0]) else float(c[0])
            out[cand.model] = Score(p_success=float(p[0]), cost_usd=cost, utility=float(p[0]))
        return with_utility(out, willingness_to_pay_usd)


def _sparse(v: Vector) -> tuple[list[int], list[float]]:
    """Nonzero indices and values, 6 significant digits (the JSON's size halves; a
    cosine moves by < 1e-5)."""
    idx = np.flatnonzero(v)
    return [int(i) for i in idx], [float(f"{x:.6g}") for x in v[idx]]


def train_knn(rows: Sequence[OutcomeRow], *, k: int = 15, smoothing: float = 1.0,
              dim: int = DIM, max_rows_per_candidate: int | None = None) -> KnnRouter:
    """A ``KnnRouter`` over ``rows`` (numpy only: nothing is fitted, rows are stored).
    ``k`` neighbours per candidate (>= 1), ``smoothing`` the prior's weight (> 0),
    ``max_rows_per_candidate`` keeps only each model's latest rows (None: all). The
    JSON grows by about 1 KB per row (synthetic goals of ~15 words and 3 constraints).
    Raises ``ConfigError`` for no rows or bad settings."""
    if not rows:
        raise ConfigError("train: no outcome rows (export some with `swarmbus route export`)")
    if k < 1 or not smoothing > 0:
        raise ConfigError(f"train: k {k} must be >= 1 and smoothing {smoothing} > 0")
    models: dict[str, dict[str, list[Any]]] = {}
    for r in sorted(rows, key=lambda r: (r.at, r.workflow_id, r.step, r.model)):
        d = models.setdefault(r.model, {"i": [], "v": [], "ok": [], "cost": []})
        idx, val = _sparse(vectorize(r.features, dim))
        d["i"].append(idx)
        d["v"].append(val)
        d["ok"].append(1 if r.approved else 0)
        d["cost"].append(r.cost_usd)
    if max_rows_per_candidate is not None:
        if max_rows_per_candidate < 1:
            raise ConfigError(f"train: max_rows_per_candidate {max_rows_per_candidate}: >= 1")
        models = {m: {key: col[-max_rows_per_candidate:] for key, col in d.items()}
                  for m, d in models.items()}
    body: dict[str, Any] = {"schema": SCHEMA, "kind": "knn", "dim": dim, "k": k,
                            "smoothing": smoothing,
                            "rows": sum(len(d["ok"]) for d in models.values()),
                            "models": dict(sorted(models.items()))}
    body["version"] = body_version(body)
    return KnnRouter(body)
