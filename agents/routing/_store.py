"""Routers as JSON text, and which router a step uses: a stored, activated learned
router when there is one, else the rules written in the workflow."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from swarmbus.protocols import ConfigError

from ._baselines import Rule, RuleRouter
from ._knn import SCHEMA, KnnRouter
from ._logistic import LogisticRouter
from ._router import Router

__all__ = ["load_router", "select_router"]


def load_router(text: str) -> KnnRouter | LogisticRouter:
    """A learned router from its ``to_json`` text (numpy only). Raises
    ``ConfigError`` for text that is not JSON, another schema, or an unknown kind."""
    try:
        body: Any = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"stored router: not JSON ({e})") from None
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        found = body.get("schema") if isinstance(body, dict) else type(body).__name__
        raise ConfigError(f"stored router: schema {found!r}, expected {SCHEMA!r} (write it "
                          "with a router's to_json)")
    try:
        if body.get("kind") == "knn":
            return KnnRouter(body)
        if body.get("kind") == "logistic":
            return LogisticRouter(body)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"stored router {body.get('kind')}: malformed ({e!r})") from None
    raise ConfigError(f"stored router: unknown kind {body.get('kind')!r} (knn or logistic)")


def select_router(stored: str | None, rules: Sequence[Rule | dict[str, Any]],
                  candidates: Sequence[str] | None = None) -> Router:
    """The router a step uses: the stored learned router (its JSON text, as activated
    by training) when there is one, else a ``RuleRouter`` of ``rules`` (the workflow's;
    with no data, rules are what route). ``candidates`` checks the rules' models.
    Raises ``ConfigError`` for bad rules or stored text that does not load."""
    if stored is None:
        return RuleRouter(rules, candidates)
    return load_router(stored)
