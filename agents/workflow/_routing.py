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

from swarmbus.bus import Bus, KeyValueStore
from swarmbus.protocols import RouteDecision, RouteScore

from ..models import RouteConfig, RoutedModel, price_for

if TYPE_CHECKING:  # routing needs numpy (the `route` extra): imported when a step routes
    from ..routing import Candidate, Features, Router
    from ._call import StepCall

__all__ = ["EXPECTED_OUTPUT_TOKENS", "ROUTERS_BUCKET", "Routes", "features_of"]

ROUTERS_BUCKET = "routers"
"""The key-value bucket of trained routers: key = the router's name, value = its JSON."""
EXPECTED_OUTPUT_TOKENS = 1000
"""The output a baseline's cost estimate assumes for one call of a step (tokens)."""


def features_of(call: StepCall) -> Features:
    """What a router reads of a step's run: the task's text, the sizes of the step's
    inputs (characters of their JSON), the round, the open findings, the budget left
    (USD)."""
    from ..routing import Features

    state, task = call.state, call.state.task
    return Features(
        workflow=call.workflow.name, step=call.step.id, role=call.step.role,
        goal=task.goal, constraints=list(task.constraints), language=task.language,
        input_chars=sum(len(v.model_dump_json()) for v in call.inputs.values()),
        round=state.round, open_findings=len(state.findings),
        budget_left_usd=max(state.budget_usd - state.total.priced_cost_usd, 0.0))


def _candidates(model: RoutedModel, f: Features) -> list[Candidate]:
    from ..routing import Candidate

    tokens_in = f.input_chars // 4 + 1000  # the inputs, and a system prompt's worth
    out = []
    for name in model.candidates:
        price = price_for(name)
        hint = None if price is None else price.cost(input_tokens=tokens_in,
                                                     output_tokens=EXPECTED_OUTPUT_TOKENS)
        out.append(Candidate(model=name, price_hint_usd=hint))
    return out


class Routes:
    """The routers of one agent: baselines built from a step's ``RouteConfig``, and
    trained routers read from the ``routers`` bucket (cached by revision)."""

    def __init__(self) -> None:
        self._store: KeyValueStore | None = None
        self._loaded: dict[str, tuple[int, Router]] = {}

    async def setup(self, bus: Bus) -> None:
        self._store = await bus.key_value(ROUTERS_BUCKET)

    async def _trained(self, name: str) -> Router | None:
        if self._store is None:
            return None
        entry = await self._store.entry(name)
        if entry is None:
            return None
        value, revision = entry
        known = self._loaded.get(name)
        if known is None or known[0] != revision:
            from ..routing import load_router

            known = (revision, load_router(value.decode()))
            self._loaded[name] = known
        return known[1]

    async def router(self, config: RouteConfig, model: RoutedModel) -> tuple[Router, str]:
        """The router ``config`` names, and a note when another stands in for it. Raises
        ``ConfigError`` for bad rules, ``MissingExtraError`` without numpy."""
        from ..routing import BestRouter, CheapestRouter, RandomRouter, RuleRouter

        kind = config.router
        if kind == "best":
            return BestRouter(model.best), ""
        if kind == "cheapest":
            return CheapestRouter(), ""
        if kind == "random":
            return RandomRouter(None), ""
        if kind != "rule":
            trained = await self._trained(kind)
            if trained is not None:
                return trained, ""
        note = "" if kind == "rule" else f"no trained router {kind!r} yet: the rules chose"
        if not config.rules:
            return BestRouter(model.best), note or "no rules: always-best chose"
        return RuleRouter(config.rules, list(model.candidates)), note

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
        out = RouteDecision(
            model=decision.model, router=router.name, version=router.version,
            probability=decision.probability, explored=decision.explored,
            scores=[RouteScore(model=m, p_success=s.p_success, cost_usd=s.cost_usd,
                               utility=s.utility) for m, s in decision.scores.items()],
            decided_s=time.perf_counter() - started, features=f.model_dump(mode="json"),
            note=note)
        call.state.choices[key] = out
        return out
