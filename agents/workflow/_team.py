"""The agents that run a workflow: one ``StepAgent`` per role, and the supervisor."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

from swarmbus.bus import ConsumerSettings
from swarmbus.protocols import CompiledWorkflow, ConfigError, SourceFile, TestReport

from .._agent import Agent
from .._guards import Guards
from ..models import Model, ModelConfig, ModelSettings
from ..sandbox import SandboxLimits, run_acceptance, run_tests
from ._parallel import SandboxContract
from ._registry import Workflows
from ._step import StepAgent
from ._supervisor import Supervisor
from ._tools import SandboxPytest, Tool

__all__ = ["default_tools", "team"]


def default_tools(sandbox: SandboxLimits | None = None) -> dict[str, Tool]:
    """The tools a workflow can name, with the real sandbox behind ``sandbox.pytest``
    (the submission's own tests, then the task's hidden acceptance tests, if any) and
    ``sandbox.contract`` (a parallel design's interface, checked before coders start)."""
    limits = sandbox or SandboxLimits()

    async def runner(files: Sequence[SourceFile]) -> TestReport:
        return await run_tests(files, limits=limits)

    async def acceptance(files: Sequence[SourceFile], tests: Sequence[SourceFile]) -> TestReport:
        return await run_acceptance(files, tests, limits=limits)

    return {"sandbox.pytest": SandboxPytest(runner, acceptance=acceptance),
            "sandbox.contract": SandboxContract(runner)}


def team(
    workflow: CompiledWorkflow,
    *,
    models: Mapping[str, Model] | None = None,
    build: Callable[[ModelConfig], Model] | None = None,
    roles: Iterable[str] | None = None,
    tools: Mapping[str, Tool] | None = None,
    settings: Mapping[str, ModelSettings] | None = None,
    consumers: Mapping[str, ConsumerSettings] | None = None,
    replicas: Mapping[str, int] | None = None,
    cache_ttl_s: float | None = None,
    share_cache: bool = False,
    supervisor: bool = True,
    make_default: bool | None = None,
    classes: Mapping[str, type[StepAgent]] | None = None,
    revise: Mapping[str, Literal["edits", "whole"]] | None = None,
) -> list[Agent]:
    """A ``StepAgent`` for each role of ``workflow`` (or of ``roles``), sharing one
    ``Workflows`` and one ``Guards``, plus the ``Supervisor``.

    ``make_default``: make ``workflow`` the namespace's default (True), only when it
    has none (None, the default), or never (False). ``models`` gives each role's model
    (steps naming their own are built with ``build``); ``tools`` defaults to the real
    sandbox. A role runs as its class
    in ``classes``, else the ``agent`` its steps name, else ``StepAgent``. Raises
    ``ConfigError`` for a role the workflow does not have, or steps of one role
    bound to different classes.
    """
    wanted = list(roles) if roles is not None else list(workflow.roles)
    unknown = [r for r in wanted if r not in workflow.roles]
    if unknown:
        raise ConfigError(f"workflow {workflow.name!r} has no role {unknown}; its roles are "
                          f"{', '.join(workflow.roles)}")
    shared = Workflows(workflow, make_default=make_default)
    guards = Guards(share_cache=share_cache)
    toolbox = dict(tools) if tools is not None else default_tools()
    agents: list[Agent] = []
    for role in wanted:
        cls = (classes or {}).get(role) or _agent_class(workflow, role)
        agents.append(cls(
            role, workflows=shared, model=(models or {}).get(role), build=build, tools=toolbox,
            settings=(settings or {}).get(role), cache_ttl_s=cache_ttl_s,
            share_cache=share_cache, guards=guards, consumer=(consumers or {}).get(role),
            replicas=(replicas or {}).get(role, 1), revise=(revise or {}).get(role, "edits"),
        ))
    if supervisor:
        agents.append(Supervisor())
    return agents


def _agent_class(workflow: CompiledWorkflow, role: str) -> type[StepAgent]:
    paths = {a for s in workflow.roles[role] if (a := workflow.steps[s].agent) is not None}
    if not paths:
        return StepAgent
    if len(paths) > 1:
        raise ConfigError(f"the steps of role {role!r} name different agents {sorted(paths)}: "
                          "one role is one agent type")
    module, _, attr = str(paths.pop()).partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, StepAgent)):
        raise ConfigError(f"{module}:{attr} is not a StepAgent subclass")
    return cls
