"""Routers that need no data: always-best, always-cheapest, random at a share, and
rules written in the workflow. Usable from the first run, and what a learned router
must beat before it is activated."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarmbus.protocols import ConfigError

from ._features import Features
from ._router import Candidate, Decision, Router, Score, check_candidates

__all__ = ["OPERATORS", "BestRouter", "CheapestRouter", "RandomRouter", "Rule", "RuleRouter",
           "parse_rules"]

_NUMERIC = ("input_chars", "round", "open_findings", "budget_left_usd")
_TEXT = ("workflow", "step", "role", "language", "goal")
# Which operators each feature takes: numbers compare, text matches, `constraints`
# (a list of strings) only `contains`.
_ALLOWED = {
    **{n: ("gt", "ge", "lt", "le", "eq", "in") for n in _NUMERIC},
    **{n: ("eq", "in", "contains") for n in _TEXT},
    "constraints": ("contains",),
}
OPERATORS = ("gt", "ge", "lt", "le", "eq", "in", "contains")


def _indicator(pick: str, candidates: Sequence[Candidate]) -> dict[str, Score]:
    """A baseline's scores: 1.0 on its pick, 0.0 elsewhere (not a probability)."""
    return {c.model: Score(p_success=1.0 if c.model == pick else 0.0,
                           cost_usd=c.price_hint_usd, utility=1.0 if c.model == pick else 0.0)
            for c in candidates}


class _Fixed(Router):
    """A baseline that picks by a rule of its own, never by utility."""

    def pick(self, features: Features, candidates: Sequence[Candidate]) -> str:
        raise NotImplementedError

    def score(self, features: Features, candidates: Sequence[Candidate], *,
              willingness_to_pay_usd: float = math.inf) -> dict[str, Score]:
        return _indicator(self.pick(features, candidates), candidates)

    def greedy(self, features: Features, candidates: Sequence[Candidate],
               scores: dict[str, Score]) -> str:
        return next(m for m, s in scores.items() if s.p_success == 1.0)


class BestRouter(_Fixed):
    """Always ``best`` (a model name; ``ConfigError`` at decision time when it is not
    among the candidates)."""

    name = "best"

    def __init__(self, best: str) -> None:
        self.best = best

    def pick(self, features: Features, candidates: Sequence[Candidate]) -> str:
        if self.best not in {c.model for c in candidates}:
            raise ConfigError(f"route: the best model {self.best!r} is not a candidate "
                              f"({', '.join(c.model for c in candidates)})")
        return self.best


class CheapestRouter(_Fixed):
    """Always the candidate of the lowest ``price_hint_usd`` (the first of equal ones;
    candidates without a price come last, so with none priced the first is used)."""

    name = "cheapest"

    def pick(self, features: Features, candidates: Sequence[Candidate]) -> str:
        check_candidates(candidates)
        return min(candidates, key=lambda c: (c.price_hint_usd is None,
                                              c.price_hint_usd or 0.0)).model


class RandomRouter(Router):
    """A random candidate at ``share`` (model name -> weight >= 0; candidates missing
    from it get 0; None or all-zero: uniform). Compared with a learned router, the
    share is matched to the learned one's picks, so it spends like it without
    looking at the task. Its scores are each candidate's share; ``probability`` in
    the decision is the chosen one's share and ``explore`` is ignored (every pick is
    already random)."""

    name = "random"

    def __init__(self, share: dict[str, float] | None = None) -> None:
        if share is not None and any(w < 0 or not math.isfinite(w) for w in share.values()):
            raise ConfigError(f"random router: shares must be finite and >= 0, got {share}")
        self.share = dict(share or {})

    def weights(self, candidates: Sequence[Candidate]) -> dict[str, float]:
        """Each candidate's probability (they sum to 1)."""
        names = check_candidates(candidates)
        raw = {n: self.share.get(n, 0.0) for n in names} if self.share else {}
        total = sum(raw.values())
        if total <= 0:
            return {n: 1.0 / len(names) for n in names}
        return {n: w / total for n, w in raw.items()}

    def score(self, features: Features, candidates: Sequence[Candidate], *,
              willingness_to_pay_usd: float = math.inf) -> dict[str, Score]:
        w = self.weights(candidates)
        return {c.model: Score(p_success=w[c.model], cost_usd=c.price_hint_usd,
                               utility=w[c.model]) for c in candidates}

    def choose(self, features: Features, candidates: Sequence[Candidate], *,
               willingness_to_pay_usd: float, explore: float,
               rng: random.Random) -> Decision:
        started = time.perf_counter()
        w = self.weights(candidates)
        names = [n for n in w if w[n] > 0]
        chosen = rng.choices(names, weights=[w[n] for n in names])[0]
        return Decision(model=chosen, router=self.name, version=self.version,
                        scores=self.score(features, candidates), probability=w[chosen],
                        explored=False, decided_s=time.perf_counter() - started)


class Rule(BaseModel):
    """One rule of a rule router: ``if`` (feature name -> {operator: value}; all must
    hold) and ``use`` (the model then). A rule without ``if`` always matches and must
    be the last (the default). Operators: gt, ge, lt, le (numbers), eq, in (a list),
    contains (case-insensitive text in ``goal``, ``step``, ...; in any of
    ``constraints``). A missing value (no language, no budget) matches nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    when: dict[str, dict[str, Any]] | None = Field(default=None, alias="if")
    use: str = Field(min_length=1)

    @model_validator(mode="after")
    def _known(self) -> Rule:
        for feature, ops in (self.when or {}).items():
            if feature not in _ALLOWED:
                raise ValueError(f"unknown feature {feature!r} (use one of "
                                 f"{', '.join(_ALLOWED)})")
            if not isinstance(ops, dict) or not ops:
                raise ValueError(f"{feature}: give {{operator: value}}, e.g. {{gt: 4000}}")
            for op, value in ops.items():
                if op not in _ALLOWED[feature]:
                    raise ValueError(f"{feature}: operator {op!r} does not apply (use one of "
                                     f"{', '.join(_ALLOWED[feature])})")
                if op == "in" and not isinstance(value, list):
                    raise ValueError(f"{feature}.in: give a list, got {value!r}")
                if op in ("gt", "ge", "lt", "le") and (
                        isinstance(value, bool) or not isinstance(value, int | float)):
                    raise ValueError(f"{feature}.{op}: give a number, got {value!r}")
                if op == "contains" and not isinstance(value, str):
                    raise ValueError(f"{feature}.contains: give text, got {value!r}")
        return self

    def matches(self, f: Features) -> bool:
        """Whether every condition holds for ``f``."""
        return all(_holds(getattr(f, name), op, value)
                   for name, ops in (self.when or {}).items() for op, value in ops.items())


def _holds(x: Any, op: str, value: Any) -> bool:
    if x is None:
        return False
    if op == "contains":
        texts = x if isinstance(x, list) else [x]
        return any(str(value).lower() in str(t).lower() for t in texts)
    if op == "eq":
        return bool(x == value)
    if op == "in":
        return x in value
    return bool({"gt": x > value, "ge": x >= value, "lt": x < value, "le": x <= value}[op])


def parse_rules(data: Any, candidates: Sequence[str] | None = None, *,
                where: str = "route.rules") -> list[Rule]:
    """Rules from workflow data (a list of mappings) checked: every rule valid, only
    the last without ``if``, and (given ``candidates``) every ``use`` a candidate.
    Raises ``ConfigError`` naming ``where[index]`` and what to change."""
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{where}: give a list of rules, the last one a default "
                          "without `if`, e.g. [{if: {input_chars: {gt: 4000}}, use: ...}, "
                          "{use: ...}]")
    rules = []
    for i, item in enumerate(data):
        try:
            rules.append(item if isinstance(item, Rule) else Rule.model_validate(item))
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{where}[{i}]{'.' + loc if loc else ''}: {msg}") from None
    for i, r in enumerate(rules[:-1]):
        if r.when is None:
            raise ConfigError(f"{where}[{i}]: a rule without `if` must be the last "
                              f"(rules after it are never used)")
    if rules[-1].when is not None:
        raise ConfigError(f"{where}: the last rule needs no `if` (it is the default): "
                          f"add {{use: <model>}}")
    if candidates is not None:
        for i, r in enumerate(rules):
            if r.use not in candidates:
                raise ConfigError(f"{where}[{i}].use: {r.use!r} is not a candidate "
                                  f"(candidates: {', '.join(candidates)})")
    return rules


class RuleRouter(_Fixed):
    """The first rule that matches picks the model (``parse_rules`` checks them;
    ``candidates``, when given, are checked against every ``use`` at once)."""

    name = "rule"

    def __init__(self, rules: Sequence[Rule | dict[str, Any]],
                 candidates: Sequence[str] | None = None) -> None:
        self.rules = parse_rules(list(rules), candidates)

    def pick(self, features: Features, candidates: Sequence[Candidate]) -> str:
        names = check_candidates(candidates)
        use = next(r.use for r in self.rules if r.matches(features))
        if use not in names:
            raise ConfigError(f"route.rules: {use!r} is not a candidate "
                              f"(candidates: {', '.join(names)})")
        return use

