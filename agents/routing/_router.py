"""A router's contract: candidates in, a scored decision out, with the probability of
the pick recorded so that later data can be re-weighted without bias."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from swarmbus.protocols import ConfigError

from ._features import Features
from ._np import Vector, np

__all__ = ["Candidate", "Decision", "Router", "Score", "check_candidates",
           "fill_unknown_costs", "pick_best", "with_utility"]


class Candidate(BaseModel):
    """A model a step may run on: ``model`` its ``provider:model`` name,
    ``price_hint_usd`` the expected cost of one call of this step (USD; None: unknown)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    price_hint_usd: float | None = Field(default=None, ge=0)


class Score(BaseModel):
    """A router's view of one candidate for one decision: ``p_success`` the chance the
    run is approved with it (0..1; a baseline puts 1.0 on the one it picks and 0.0
    elsewhere, an indicator, not an estimate), ``cost_usd`` the expected cost of the
    step on it (USD; None: unknown), ``utility`` = p_success - cost / willingness to
    pay (see ``with_utility`` for an unknown cost)."""

    model_config = ConfigDict(frozen=True)

    p_success: float
    cost_usd: float | None
    utility: float


class Decision(BaseModel):
    """What a router chose and why, as provenance and the trail record it (JSON).

    ``model`` the chosen candidate; ``router``/``version`` who chose; ``scores`` every
    candidate's ``Score``; ``probability`` the chance with which ``model`` was picked,
    exploration included (a propensity for inverse-propensity estimates later);
    ``explored`` True when exploration, not the best utility, picked it;
    ``decided_s`` the seconds the decision took (the router's own compute)."""

    model: str
    router: str
    version: str
    scores: dict[str, Score]
    probability: float = Field(gt=0, le=1)
    explored: bool
    decided_s: float = Field(ge=0)


def with_utility(scores: dict[str, Score], willingness_to_pay_usd: float) -> dict[str, Score]:
    """The same scores with ``utility`` = p_success - cost_usd / willingness_to_pay_usd.

    An unknown cost (None) is charged at the dearest known cost among these
    candidates, so that a model is never preferred for lacking a price; when no
    candidate has a known cost, costs count for nothing (utility = p_success). An
    infinite willingness to pay ranks by p_success alone. Raises ``ConfigError`` for
    a willingness to pay <= 0."""
    if not willingness_to_pay_usd > 0:
        raise ConfigError(f"willingness_to_pay_usd {willingness_to_pay_usd}: must be > 0 "
                          "(USD one more approved run is worth to you)")
    known = [s.cost_usd for s in scores.values() if s.cost_usd is not None]
    dearest = max(known, default=0.0)
    out = {}
    for name, s in scores.items():
        cost = dearest if s.cost_usd is None else s.cost_usd
        penalty = 0.0 if math.isinf(willingness_to_pay_usd) else cost / willingness_to_pay_usd
        out[name] = s.model_copy(update={"utility": s.p_success - penalty})
    return out


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def fill_unknown_costs(c: Vector) -> Vector:
    """``c`` (n, k) with each NaN (unknown cost) replaced by the dearest known cost of
    its row, 0.0 when the row has none, as ``with_utility`` charges unknown costs."""
    out = np.array(c, dtype=np.float64)
    known = ~np.isnan(out)
    dearest = np.where(known, out, -np.inf).max(axis=1, initial=-np.inf)
    dearest = np.where(np.isfinite(dearest), dearest, 0.0)
    return np.where(known, out, dearest[:, None])


def pick_best(scores: dict[str, Score], order: Sequence[str]) -> str:
    """The candidate of the highest utility; ties go to the lower known cost, then to
    the earlier one in ``order`` (the candidates as configured)."""
    rank = {m: i for i, m in enumerate(order)}

    def key(m: str) -> tuple[float, float, int]:
        s = scores[m]
        return (-s.utility, math.inf if s.cost_usd is None else s.cost_usd, rank.get(m, 0))

    return min(scores, key=key)


def check_candidates(candidates: Sequence[Candidate]) -> list[str]:
    """The candidates' names; ``ConfigError`` for none or a repeated one."""
    names = [c.model for c in candidates]
    if not names:
        raise ConfigError("route: no candidates (give at least one model)")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"route: candidate {twice!r} is listed twice")
    return names


class Router:
    """The base of every router: ``name`` and ``version`` identify it in decisions;
    subclasses implement ``score`` and may override ``greedy`` (the pick without
    exploration). ``choose`` adds exploration and records the propensity."""

    name: str = "router"
    version: str = "1"

    def score(self, features: Features, candidates: Sequence[Candidate], *,
              willingness_to_pay_usd: float = math.inf) -> dict[str, Score]:
        """Every candidate's ``Score`` for this task, keyed by model name."""
        raise NotImplementedError

    def score_matrix(self, tasks: Sequence[Features], candidates: Sequence[Candidate]
                     ) -> tuple[Vector, Vector]:
        """Every task's p_success and cost (USD) per candidate, two arrays of shape
        (len(tasks), len(candidates)), as ``score`` gives them; an unknown cost is the
        dearest known cost of that task (as ``with_utility`` charges it). Learned
        routers compute it in one batch; this default loops over ``score``."""
        p = np.zeros((len(tasks), len(candidates)))
        c = np.zeros((len(tasks), len(candidates)))
        for i, f in enumerate(tasks):
            s = self.score(f, candidates)
            for j, cand in enumerate(candidates):
                p[i, j] = s[cand.model].p_success
                c[i, j] = _nan(s[cand.model].cost_usd)
        return p, fill_unknown_costs(c)

    def greedy(self, features: Features, candidates: Sequence[Candidate],
               scores: dict[str, Score]) -> str:
        """The pick without exploration: by default the highest utility."""
        return pick_best(scores, [c.model for c in candidates])

    def choose(self, features: Features, candidates: Sequence[Candidate], *,
               willingness_to_pay_usd: float, explore: float,
               rng: random.Random) -> Decision:
        """Pick a candidate for this step: the greedy one with probability
        ``1 - explore``, else one of the others uniformly (``explore`` in [0, 1]),
        so each other has ``explore / (k - 1)``; with one candidate it is picked
        with probability 1. ``rng`` draws (seed it for repeatable picks). Raises
        ``ConfigError`` for no candidates, a repeated one, ``explore`` outside
        [0, 1] or a willingness to pay <= 0."""
        started = time.perf_counter()
        names = check_candidates(candidates)
        if not 0.0 <= explore <= 1.0:
            raise ConfigError(f"route.explore {explore}: must be between 0 and 1 "
                              "(the share of calls sent to other candidates)")
        scores = self.score(features, candidates, willingness_to_pay_usd=willingness_to_pay_usd)
        best = self.greedy(features, candidates, scores)
        others = [n for n in names if n != best]
        if others and explore > 0 and rng.random() < explore:
            chosen, probability, explored = rng.choice(others), explore / len(others), True
        else:
            chosen, probability, explored = best, 1.0 - explore if others else 1.0, False
        return Decision(model=chosen, router=self.name, version=self.version, scores=scores,
                        probability=probability, explored=explored,
                        decided_s=time.perf_counter() - started)
