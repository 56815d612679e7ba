"""A calibrated classifier per candidate: will the run be approved if this step runs on
this model? scikit-learn fits it (``train_logistic``, the ``route`` extra); the weights
and the Platt calibration are stored as numbers and read back with numpy alone."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from swarmbus.protocols import ConfigError

from ._extras import require
from ._features import DIM, Features, vectorize
from ._knn import SCHEMA, body_version, smoothed_rate
from ._np import Vector, np
from ._router import Candidate, Router, Score, fill_unknown_costs, with_utility
from ._rows import OutcomeRow

__all__ = ["LogisticRouter", "train_logistic"]

# Platt scaling on 3 stratified folds needs 3 of each outcome; with fewer the model
# is fitted on all rows and used uncalibrated; with one outcome only it is a constant.
_FOLDS = 3


def _expit(z: Vector) -> Vector:
    """1 / (1 + exp(-z)) without overflow for large |z|."""
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


class LogisticRouter(Router):
    """Per candidate: p_success = the mean over calibration folds of
    1 / (1 + exp(a * (w . x + b) + c)), where ``w``, ``b`` are a logistic regression's
    weights and bias on ``vectorize``d features and ``a``, ``c`` its Platt scaling
    (as scikit-learn's ``CalibratedClassifierCV(method="sigmoid", ensemble=True)``
    computes it); a candidate with a single outcome in training has a constant
    smoothed rate. cost = the candidate's mean training cost (USD), else its
    ``price_hint_usd``; a candidate never seen in training gets the pooled pass
    rate. Numpy only; ``to_json``/``load_router`` carry it."""

    name = "learned"

    def __init__(self, body: dict[str, Any]) -> None:
        self.estimators: dict[str, Any] = {}  # the scikit-learn models, when just trained
        if body.get("schema") != SCHEMA or body.get("kind") != "logistic":
            raise ConfigError(f"not a logistic router ({body.get('schema')}, "
                              f"{body.get('kind')})")
        self.body = body
        self.dim = int(body["dim"])
        self.version = str(body["version"])
        self.pooled = float(body["pooled"])
        self._folds: dict[str, list[tuple[Vector, float, float, float]]] = {}
        for model, m in body["models"].items():
            self._folds[model] = [(np.asarray(f["w"], dtype=np.float64), float(f["b"]),
                                   float(f["a"]), float(f["c"])) for f in m["folds"]]

    def to_json(self) -> str:
        """The router as JSON text (no pickle): schema, kind, version, dim, and per
        model its folds' weights, bias and calibration, constant rate and mean cost."""
        return json.dumps(self.body, separators=(",", ":"))

    def p_success(self, model: str, x: Vector) -> Vector:
        """P(approved) on ``model`` for each row of ``x`` (shape (n, dim)), shape (n,)."""
        m = self.body["models"].get(model)
        if m is None:
            return np.full(x.shape[0], self.pooled)
        if m["constant"] is not None:
            return np.full(x.shape[0], float(m["constant"]))
        probs = [_expit(-(a * (x @ w + b) + c)) for w, b, a, c in self._folds[model]]
        return np.mean(probs, axis=0)  # type: ignore[no-any-return]

    def _cost(self, cand: Candidate) -> float | None:
        m = self.body["models"].get(cand.model)
        return m["mean_cost"] if m is not None and m["mean_cost"] is not None else (
            cand.price_hint_usd)

    def score_matrix(self, tasks: Sequence[Features], candidates: Sequence[Candidate]
                     ) -> tuple[Vector, Vector]:
        x = np.stack([vectorize(f, self.dim) for f in tasks])
        p = np.stack([self.p_success(c.model, x) for c in candidates], axis=1)
        costs = [self._cost(c) for c in candidates]
        c = np.tile([math.nan if v is None else v for v in costs], (len(tasks), 1))
        return p, fill_unknown_costs(c)

    def score(self, features: Features, candidates: Sequence[Candidate], *,
              willingness_to_pay_usd: float = math.inf) -> dict[str, Score]:
        x = vectorize(features, self.dim)[None, :]
        out = {}
        for cand in candidates:
            p = float(self.p_success(cand.model, x)[0])
            out[cand.model] = Score(p_success=p, cost_usd=self._cost(cand), utility=p)
        return with_utility(out, willingness_to_pay_usd)


def fit_candidate(x: Vector, y: Vector, *, c: float = 1.0, seed: int = 0) -> Any:
    """The fitted scikit-learn estimator for one candidate: a
    ``CalibratedClassifierCV`` (sigmoid, 3 stratified folds) of a
    ``LogisticRegression(C=c)``, a plain ``LogisticRegression`` when an outcome has
    fewer than 3 rows, or None when only one outcome occurs. Needs the ``route``
    extra (``MissingExtraError`` without it)."""
    linear = require("sklearn.linear_model", "route", "training a router")
    calibration = require("sklearn.calibration", "route", "training a router")
    selection = require("sklearn.model_selection", "route", "training a router")
    sparse = require("scipy.sparse", "route", "training a router")
    x = sparse.csr_matrix(x)  # hashed vectors are ~90% zeros: fits several times faster
    positives = int(y.sum())
    fewest = min(positives, y.size - positives)
    if fewest == 0:
        return None
    base = linear.LogisticRegression(C=c, max_iter=5000)
    if fewest < _FOLDS:
        return base.fit(x, y)
    folds = selection.StratifiedKFold(n_splits=_FOLDS, shuffle=True, random_state=seed)
    return calibration.CalibratedClassifierCV(base, method="sigmoid", cv=folds,
                                              ensemble=True).fit(x, y)


def _folds_of(fitted: Any) -> list[dict[str, Any]]:
    """The numbers of a fitted estimator: for each fold its weights ``w`` (dim),
    bias ``b`` and Platt's ``a``, ``c`` (P = 1 / (1 + exp(a f + c)))."""
    if hasattr(fitted, "calibrated_classifiers_"):
        out = []
        for cc in fitted.calibrated_classifiers_:
            (cal,) = cc.calibrators
            est = cc.estimator
            out.append({"w": [float(v) for v in est.coef_[0]], "b": float(est.intercept_[0]),
                        "a": float(cal.a_), "c": float(cal.b_)})
        return out
    # uncalibrated: the regression's own probability, 1 / (1 + exp(-f))
    return [{"w": [float(v) for v in fitted.coef_[0]], "b": float(fitted.intercept_[0]),
             "a": -1.0, "c": 0.0}]


def train_logistic(rows: Sequence[OutcomeRow], *, c: float = 1.0, seed: int = 0,
                   dim: int = DIM) -> LogisticRouter:
    """A ``LogisticRouter`` fitted on ``rows`` (one classifier per model in them;
    ``c`` the inverse L2 strength, ``seed`` the folds' shuffle). Needs scikit-learn
    (the ``route`` extra); the result needs numpy only. Raises ``ConfigError`` for no
    rows, ``MissingExtraError`` without scikit-learn. The returned router's
    ``estimators`` holds the fitted scikit-learn models (model -> estimator, None for a
    constant), for checking that the JSON gives the same probabilities; they are not
    serialised."""
    if not rows:
        raise ConfigError("train: no outcome rows (export some with `swarmbus route export`)")
    by_model: dict[str, list[OutcomeRow]] = {}
    for r in sorted(rows, key=lambda r: (r.at, r.workflow_id, r.step, r.model)):
        by_model.setdefault(r.model, []).append(r)
    models: dict[str, Any] = {}
    fitted_all: dict[str, Any] = {}
    for model, mine in sorted(by_model.items()):
        x = np.stack([vectorize(r.features, dim) for r in mine])
        y = np.asarray([1.0 if r.approved else 0.0 for r in mine])
        fitted = fit_candidate(x, y, c=c, seed=seed)
        fitted_all[model] = fitted
        costs = [r.cost_usd for r in mine if r.cost_usd is not None]
        models[model] = {
            "rows": len(mine),
            "constant": smoothed_rate(float(y.sum()), y.size) if fitted is None else None,
            "folds": [] if fitted is None else _folds_of(fitted),
            "mean_cost": sum(costs) / len(costs) if costs else None,
        }
    passed = sum(1 for r in rows if r.approved)
    body: dict[str, Any] = {"schema": SCHEMA, "kind": "logistic", "dim": dim, "c": c,
                            "seed": seed, "rows": len(rows),
                            "pooled": smoothed_rate(passed, len(rows)), "models": models}
    body["version"] = body_version(body)
    router = LogisticRouter(body)
    router.estimators = fitted_all
    return router
