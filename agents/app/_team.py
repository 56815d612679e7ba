"""Builds the configured swarm's agents from ``swarm.yaml``: the workflow's roles
with their models, the supervisor, and custom agents."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping

import structlog

from swarmbus.protocols import CompiledWorkflow, ConfigError, WorkflowError

from .._agent import Agent
from ..models import FallbackModel, Model, build_model
from ..sandbox import check_isolation
from ..workflow import Tool, check_models, default_tools, load_workflow, team
from ._config import RoleConfig, SwarmConfig
from ._demo import offline_models

__all__ = ["build_agents", "prepare_models", "unpriced_models"]

log = structlog.get_logger("swarmbus.app")


def _runs(cfg: SwarmConfig, wf: CompiledWorkflow, role: str) -> tuple[bool, str]:
    """Whether this process runs ``role``, and why not when it does not: it runs when
    every step of the role can be served here (a model of its own, the role's model in
    swarm.yaml, or code: ``agent:``), or when ``roles.<role>.run`` says so."""
    rc = cfg.roles.get(role)
    if rc is not None and rc.run is not None:
        return rc.run, f"roles.{role}.run is false"
    if cfg.offline or (rc is not None and rc.model is not None):
        return True, ""
    lacking = [s for s in wf.roles[role]
               if wf.steps[s].model is None and wf.steps[s].agent is None]
    if lacking:
        return False, (f"steps {lacking} have no model: give roles.{role}.model in swarm.yaml "
                       "or model: in the step (another daemon may serve it)")
    return True, ""


def build_agents(
    cfg: SwarmConfig,
    *,
    workflow: CompiledWorkflow | None = None,
    tools: Mapping[str, Tool] | None = None,
    make_default: bool | None = None,
) -> list[Agent]:
    """The agents ``swarmbus up`` runs: every role of the workflow that has a model
    here (all of them with ``offline``), the supervisor, and the custom agents.
    ``tools`` replaces the tools steps use (default: the real sandbox);
    ``make_default`` as for ``team`` (None: the namespace's default only if it has none).

    Raises ``ConfigError`` (``WorkflowError``) for a workflow that does not load or
    whose step models do not resolve (``check_models``; its warnings are logged), a
    role in ``roles:`` the workflow lacks, a missing API key, or nothing to run.
    """
    wf = workflow or load_workflow(cfg.workflow)
    if not cfg.offline:  # the steps' models, as `swarmbus workflow check` resolves them
        found = check_models(wf)
        if found.errors:
            raise WorkflowError(cfg.workflow if workflow is None else wf.name, found.errors)
        for warning in found.warnings:
            log.warning("workflow check", workflow=wf.name, warning=str(warning))
    unknown = sorted(set(cfg.roles) - set(wf.roles))
    if unknown:
        raise ConfigError(
            f"roles {unknown} in swarm.yaml are not roles of workflow {wf.name!r} "
            f"({', '.join(wf.roles)}): rename them or remove them")
    offline = offline_models() if cfg.offline else {}
    models: dict[str, Model] = {}
    running: list[str] = []
    for role in wf.roles:
        runs, why = _runs(cfg, wf, role)
        if not runs:
            log.warning("role not run here", role=role, why=why,
                        waits_on=wf.consumer(role))
            continue
        running.append(role)
        rc = cfg.roles.get(role)
        if role in offline or cfg.offline:
            models[role] = offline.get(role) or offline["any"]
        elif rc is not None and rc.model is not None:
            models[role] = build_model(rc.model)
    if tools is None and importlib.util.find_spec("pytest") is None and any(
        "sandbox.pytest" in wf.steps[s].tool_names for r in running for s in wf.roles[r]
    ):
        raise ConfigError(
            "a step of this workflow runs submitted tests with pytest (sandbox.pytest), "
            "which is not installed: pip install 'swarmbus[sandbox]'"
        )
    build = (lambda _config: offline["any"]) if cfg.offline else None
    cache = cfg.cache.ttl_s if cfg.cache.enabled else None
    agents = team(
        wf, models=models, build=build, roles=running,
        tools=tools if tools is not None else default_tools(cfg.sandbox),
        settings={r: cfg.roles.get(r, RoleConfig()).settings for r in running},
        consumers={r: cfg.roles.get(r, RoleConfig()).consumer() for r in running},
        replicas={r: cfg.roles.get(r, RoleConfig()).replicas for r in running},
        revise={r: cfg.roles.get(r, RoleConfig()).revise for r in running},
        cache_ttl_s=cache, share_cache=cfg.cache.share_across_workflows,
        make_default=make_default,
    )
    agents.extend(cfg.custom_agents())
    if tools is None and any("sandbox.pytest" in wf.steps[s].tool_names
                             for r in running for s in wf.roles[r]):
        # Model-written code runs in the sandbox: refuse to start without the isolation it
        # needs (the offline models' code is the project's own, so any isolation will do).
        iso = check_isolation(cfg.sandbox, untrusted=not cfg.offline)
        log.info("sandbox", isolation=iso.describe())
        for gap in iso.gaps:
            log.warning("sandbox does not isolate", gap=gap)
    if not running and not cfg.agents:
        raise ConfigError(
            f"no agents to run: give the roles of workflow {wf.name!r} "
            f"({', '.join(wf.roles)}) a model in swarm.yaml (roles.{next(iter(wf.roles))}.model:"
            " 'openai:gpt-4o'), list custom agents, or use --offline for scripted models"
        )
    for role, name in unpriced_models(agents):
        log.warning("model has no price: its calls are counted as unpriced and budgets cannot "
                    "see them; add it with set_price() or SWARMBUS_PRICES_FILE",
                    role=role, model=name)
    return agents


def unpriced_models(agents: list[Agent]) -> list[tuple[str, str]]:
    """(role, model) for every role model of ``agents`` (``roles.<role>.model``, not the
    models steps name: ``check_models`` warns of those) whose calls get no cost: no
    ``price`` of its own (``ModelSpec.price``) and none in the price table."""
    return [(agent.name, m.name) for agent in agents
            for m in _leaves(getattr(agent, "model", None))
            if getattr(m, "priced", True) is False]


def _leaves(model: object) -> list[Model]:
    """The models under ``model``, through caches and fallback chains (a provider's
    model says whether it is ``priced``; offline ones have no such attribute)."""
    inner = getattr(model, "inner", None)
    if inner is not None:
        return _leaves(inner)
    if isinstance(model, FallbackModel):
        return [leaf for m in model.models for leaf in _leaves(m)]
    return [model] if isinstance(model, Model) else []


async def prepare_models(agents: list[Agent]) -> None:
    """Import the SDKs and create the clients of the agents' models, one after the
    other (``Model.prepare``; no network). ``swarmbus up`` runs it once ready; a
    failure is logged, and the first call tries again."""
    started = time.perf_counter()
    names = []
    for agent in agents:
        models = [getattr(agent, "model", None), *getattr(agent, "_step_models", {}).values()]
        for model in models:
            if not isinstance(model, Model):
                continue
            try:
                await model.prepare()
                names.append(model.name)
            except Exception as exc:
                log.warning("model not prepared; its first call tries again",
                            model=model.name, error=repr(exc))
    log.info("models prepared", models=names, seconds=round(time.perf_counter() - started, 3))
