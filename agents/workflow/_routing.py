"""Routed steps (``model: {route: ...}``): which candidate answers a run's step.

The decision is made once per run and step, before the step's first model call, from
features of the task and the step, and kept in the run's state for its later rounds
(a switch would lose the provider's prompt cache). It is the same on a redelivery:
the random draws are seeded by the run, the step and the router's version. Trained
routers are JSON in the namespace's ``routers`` bucket (``swarmbus route train``),
read again only when their revision changes, so a daemon picks up a new version
without a restart.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from typing import TYPE_CHECKING, Any

import structlog

from swarmbus.bus import Bus, KeyValueStore
from swarmbus.protocols import ConfigError, RouteDecision, RouteScore, TaskRequest

from ..models import RouteConfig, RoutedModel, price_for

if TYPE_CHECKING:  # routing needs numpy (the `route` extra): imported when a step routes
    from ..routing import Candidate, Features, Router
    from ._call import StepCall

__all__ = ["EXPECTED_OUTPUT_TOKENS", "ROUTERS_BUCKET", "Routes", "features_of", "task_chars"]

log = structlog.get_logger("swarmbus.routing")

ROUTERS_BUCKET = "routers"
"""The key-value bucket of trained routers: key = the router's name, value = its JSON."""
EXPECTED_OUTPUT_TOKENS = 1000
"""The output a baseline's cost estimate assumes for one call of a step (tokens)."""


def task_chars(task: TaskRequest) -> int:
    """Characters of the task a step reads: its goal, constraints and named inputs."""
    return len(task.goal) + sum(map(len, task.constraints)) + sum(
        len(v) for v in task.inputs.values())


def features_of(call: StepCall) -> Features:
    """What a router reads of a step's run: the task's text, ``input_chars`` (the
    characters it reads: the task's goal, constraints and inputs, and its input
    artifacts' JSON), the round, the open findings, the budget left (USD)."""
    from ..routing import Features

    state, task = call.state, call.state.task
    read = sum(len(v.model_dump_json()) for v in call.inputs.values())
    return Features(
        workflow=call.workflow.name, step=call.step.id, role=call.step.role,
        goal=task.goal, constraints=list(task.constraints), language=task.language,
        input_chars=task_chars(task) + read,
        round=state.round, open_findings=len(state.findings),
        budget_left_usd=max(state.budget_usd - state.total.priced_cost_usd, 0.0))


def _models_of(router: Router) -> set[str]:
    """The models a trained router has data on (every model, for one that does not say)."""
    models = getattr(router, "models", None)
    if isinstance(models, dict):
        return set(models)
    body = getattr(router, "body", None)
    found = body.get("models") if isinstance(body, dict) else None
    return set(found) if isinstance(found, dict) else set()


def _candidates(model: RoutedModel, f: Features) -> list[Candidate]:
    from ..routing import Candidate

    tokens_in = f.input_chars // 4 + 1000  # what it reads, and a system prompt's worth
    out = []
    for name in model.candidates:
        price = price_for(name)
        hint = None if price is None else price.cost(input_tokens=tokens_in,
                                                     output_tokens=EXPECTED_OUTPUT_TOKENS)
        out.append(Candidate(model=name, price_hint_usd=hint))
    return out


class Routes:
    """The routers of one agent: baselines built from a step's ``RouteConfig``, and
    trained routers read from the ``routers`` bucket (cached by revision; the bucket
    is looked for, never made: ``swarmbus route train`` makes it)."""

    def __init__(self) -> None:
        self._bus: Bus | None = None
        self._store: KeyValueStore | None = None
        self._loaded: dict[str, tuple[int, Router]] = {}

    async def setup(self, bus: Bus) -> None:
        self._bus = bus

    async def _trained(self, name: str) -> tuple[Router | None, str]:
        """The stored router ``name`` and, when there is none to use, why."""
        if self._store is None and self._bus is not None:
            self._store = await self._bus.find_key_value(ROUTERS_BUCKET)
        entry = await self._store.entry(name) if self._store is not None else None
        if entry is None:
            return None, f"no trained router {name!r} is stored yet"
        value, revision = entry
        known = self._loaded.get(name)
        if known is None or known[0] != revision:
            from ..routing import load_router

            try:
                known = (revision, load_router(value.decode()))
            except (ConfigError, UnicodeDecodeError) as e:
                log.warning("a stored router does not load: the rules choose", router=name,
                            bucket=ROUTERS_BUCKET, error=str(e)[:300])
                return None, (f"the stored router {name!r} (bucket {ROUTERS_BUCKET!r}, "
                              f"revision {revision}) does not load: {str(e)[:200]}")
            self._loaded[name] = known
        return known[1], ""

    async def router(self, config: RouteConfig, model: RoutedModel) -> tuple[Router, str]:
        """The router ``config`` names, and a note when another stands in for it (no
        trained router of that name, one that does not load, or one that never saw
        these candidates: the rules choose, always-best without rules). Raises
        ``ConfigError`` for bad rules, ``MissingExtraError`` without numpy."""
        from ..routing import BestRouter, CheapestRouter, RandomRouter, RuleRouter

        kind = config.router
        if kind == "best":
            return BestRouter(model.best), ""
        if kind == "cheapest":
            return CheapestRouter(), ""
        if kind == "random":
            return RandomRouter(None), ""
        why = ""
        if kind != "rule":
            trained, why = await self._trained(kind)
            if trained is not None:
                unknown = [m for m in model.candidates if m not in _models_of(trained)]
                if not unknown:
                    return trained, ""
                why = (f"the stored router {kind!r} has no data on {', '.join(unknown)} "
                       "(trained on other models)")
        if not config.rules:
            return BestRouter(model.best), (f"{why}: always-best chose" if why else
                                            "no rules: always-best chose")
        return RuleRouter(config.rules, list(model.candidates)), (
            f"{why}: the rules chose" if why else "")

    async def decide(self, call: StepCall, model: RoutedModel) -> RouteDecision:
        """The candidate that answers ``call``'s step in this run (see the module)."""
        key = call.step.id + (f"[{call.item.key}]" if call.item is not None else "")
        kept = call.state.choices.get(key)
        if kept is not None and kept.model in model.candidates:
            return kept
        started = time.perf_counter()
        f = features_of(call)
        router, note = await self.router(model.config, model)
        seed = hashlib.sha256(json.dumps(
            [call.ctx.workflow_id, key, router.name, router.version]).encode()).digest()
        decision: Any = router.choose(
            f, _candidates(model, f), willingness_to_pay_usd=model.config.willingness_to_pay_usd,
            explore=model.config.explore, rng=random.Random(seed))
        trained = router.name in ("learned", "knn") and not note
        out = RouteDecision(
            model=decision.model, router=model.config.router if trained else router.name,
            version=f"{router.name} {router.version}" if trained else router.version,
            probability=decision.probability, explored=decision.explored,
            scores=[RouteScore(model=m, p_success=s.p_success, cost_usd=s.cost_usd,
                               utility=s.utility) for m, s in decision.scores.items()],
            decided_s=time.perf_counter() - started, features=f.model_dump(mode="json"),
            note=note)
        call.state.choices[key] = out
        return out
