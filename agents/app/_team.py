"""Builds the configured team (roles with their models, custom agents) from config."""

from __future__ import annotations

from swarmbus.protocols import ROLE_TOPICS, ConfigError

from .._agent import Agent
from ..models import Model, build_model
from ..roles import Architect, Coder, Reviewer, RoleAgent
from ._config import RoleConfig, SwarmConfig
from ._demo import offline_models

__all__ = ["build_agents"]

_ROLES: dict[str, type[RoleAgent]] = {"architect": Architect, "coder": Coder, "reviewer": Reviewer}


def build_agents(cfg: SwarmConfig) -> list[Agent]:
    """The agents ``swarmbus up`` runs: every role with a model (or all three with
    ``offline``), plus the custom agents. Raises ``ConfigError`` if there are none."""
    unknown = set(cfg.roles) - set(ROLE_TOPICS)
    if unknown:
        raise ConfigError(f"unknown roles {sorted(unknown)}; the roles are {list(ROLE_TOPICS)}")
    offline = offline_models() if cfg.offline else {}
    cache = cfg.cache.ttl_s if cfg.cache.enabled else None
    agents: list[Agent] = []
    for role, cls in _ROLES.items():
        rc = cfg.roles.get(role)
        model: Model | None = offline.get(role)
        if model is None and rc is not None and rc.model is not None:
            model = build_model(rc.model)
        if model is None:
            continue
        rc = rc or RoleConfig()
        extra = {"sandbox": cfg.sandbox} if cls is Reviewer else {}
        agents.append(cls(model, cache_ttl_s=cache, settings=rc.settings, consumer=rc.consumer(),
                          replicas=rc.replicas, **extra))
    agents.extend(cfg.custom_agents())
    if not agents:
        raise ConfigError(
            "no agents to run: give roles a model in swarm.yaml (roles.coder.model: "
            "'openai:gpt-4o'), list custom agents, or use --offline for scripted models"
        )
    return agents
