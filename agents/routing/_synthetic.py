"""An offline proof: tasks with a hidden difficulty and domain that leak into their
text, and three scripted models whose success and cost depend on them. Seeded, so a
router's win (or loss) against the baselines can be checked by anyone."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ._features import Features
from ._rows import OutcomeRow

__all__ = ["SYNTHETIC_MODELS", "SYNTHETIC_RULES", "ScriptedModel", "SyntheticTask",
           "synthetic_rows", "synthetic_tasks"]

_DOMAINS: dict[str, tuple[str, ...]] = {
    "web": ("html", "form", "endpoint", "route", "json", "request", "session", "cookie",
            "template", "http", "css", "login"),
    "data": ("csv", "dataframe", "column", "aggregate", "join", "parquet", "schema",
             "pivot", "groupby", "dedupe", "histogram", "table"),
    "systems": ("socket", "thread", "lock", "process", "signal", "buffer", "queue",
                "scheduler", "cache", "memory", "file descriptor", "syscall"),
    "numeric": ("matrix", "integral", "solver", "gradient", "prime", "polynomial",
                "interpolation", "fft", "eigenvalue", "precision", "series", "vector"),
}
_EASY = ("simple", "small", "basic", "single", "quick", "tiny", "straightforward")
_HARD = ("concurrent", "distributed", "streaming", "incremental", "lock-free",
         "fault-tolerant", "edge cases", "optimised", "large inputs", "adversarial")
_FILLER = ("write", "a", "function", "that", "handles", "the", "given", "input", "and",
           "returns", "result", "with", "tests", "module", "for", "implement", "add")


@dataclass(frozen=True)
class SyntheticTask:
    """A generated task: its hidden ``difficulty`` (0 easy .. 1 hard) and ``domain``,
    and the ``features`` a router sees (the goal and constraints carry the leaks:
    domain words, difficulty words, and more constraints when harder)."""

    index: int
    difficulty: float
    domain: str
    features: Features


@dataclass(frozen=True)
class ScriptedModel:
    """A scripted candidate: P(approved) = 1 / (1 + exp(-(skill + bonus[domain] -
    slope * difficulty))); cost = ``usd_per_round`` x (1 + input chars / 1000) x
    rounds, with one round when it passes at once, 3 (the cap) when it fails."""

    name: str
    skill: float
    slope: float
    usd_per_round: float
    bonus: dict[str, float]

    def p_success(self, task: SyntheticTask) -> float:
        """Its chance of an approved run on ``task`` (0..1)."""
        z = self.skill + self.bonus.get(task.domain, 0.0) - self.slope * task.difficulty
        return 1.0 / (1.0 + math.exp(-z))


# cheap-weak (good at web), mid (good at data), expensive-strong (good everywhere).
SYNTHETIC_MODELS = (
    ScriptedModel("synthetic:small", 3.0, 8.0, 0.001, {"web": 1.5, "systems": -1.0}),
    ScriptedModel("synthetic:medium", 4.5, 6.5, 0.005, {"data": 1.5, "numeric": 0.5}),
    ScriptedModel("synthetic:large", 4.5, 5.0, 0.025, {"systems": 0.5}),
)
# What a user would write without data: long tasks and "concurrent" to the strong
# model, the rest to the mid one.
SYNTHETIC_RULES: list[dict[str, Any]] = [
    {"if": {"input_chars": {"gt": 650}}, "use": "synthetic:large"},
    {"if": {"goal": {"contains": "concurrent"}}, "use": "synthetic:large"},
    {"use": "synthetic:medium"},
]


def _words(rng: random.Random, domain: str, difficulty: float, n: int) -> list[str]:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.35:  # a domain word; 1 in 5 from another domain (noise)
            d = domain if rng.random() < 0.8 else rng.choice(list(_DOMAINS))
            out.append(rng.choice(_DOMAINS[d]))
        elif r < 0.55:  # a difficulty word, agreeing with the difficulty more often
            out.append(rng.choice(_HARD if rng.random() < difficulty else _EASY))
        else:
            out.append(rng.choice(_FILLER))
    return out


def synthetic_tasks(n: int, *, seed: int = 0) -> list[SyntheticTask]:
    """``n`` tasks (difficulty uniform in [0, 1), domain uniform over four), each with
    a goal of 8-20 words and 1 + ~4 x difficulty constraints. Same ``seed``, same
    tasks."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        difficulty = rng.random()
        domain = rng.choice(list(_DOMAINS))
        goal = " ".join(_words(rng, domain, difficulty, rng.randint(8, 12) + int(8 * difficulty)))
        constraints = [" ".join(_words(rng, domain, difficulty, rng.randint(5, 12)))
                       for _ in range(1 + int(4 * difficulty + rng.random()))]
        chars = 200 + len(goal) + sum(len(c) for c in constraints)
        features = Features(workflow="synthetic", step="code", role="coder", goal=goal,
                            constraints=constraints, language="python", input_chars=chars)
        tasks.append(SyntheticTask(i, difficulty, domain, features))
    return tasks


def synthetic_rows(n: int, *, seed: int = 0, models: tuple[ScriptedModel, ...]
                   = SYNTHETIC_MODELS) -> list[OutcomeRow]:
    """Every model's outcome on each of ``n`` synthetic tasks (3 rows a task with the
    default models), one run a minute from 2026-01-01 UTC, so a time split keeps
    whole tasks together and every held-out task has all its counterfactuals."""
    rng = random.Random(f"outcomes-{seed}")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for t in synthetic_tasks(n, seed=seed):
        at = start + timedelta(minutes=t.index)
        size = 1.0 + t.features.input_chars / 1000.0
        for m in models:
            approved = rng.random() < m.p_success(t)
            rounds = 1 + (rng.random() < t.difficulty) if approved else 3
            rows.append(OutcomeRow(
                at=at, workflow_id=f"synthetic-{seed}-{t.index:05d}", workflow="synthetic",
                step="code", model=m.name, features=t.features, approved=approved,
                rounds=rounds, cost_usd=round(m.usd_per_round * size * rounds, 8),
                latency_s=round(2.0 * rounds * size, 3)))
    return rows
