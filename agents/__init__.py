"""The swarmbus runtime (the kernel): agents, the swarm that runs them, middleware,
the ``Run`` that owns a workflow's promises and the ``Guards`` that make one for
any agent. Workflows and their step runtime are in ``swarmbus.agents.workflow``;
models in ``swarmbus.agents.models``; the ``swarmbus`` application in
``swarmbus.agents.app``."""

from ._agent import Agent, Context, Middleware, Route, handles
from ._guards import Guards, WorkflowEnded
from ._run import Run, current_run, end_workflow, result_from
from ._swarm import Swarm
from .models import LimitReached

__all__ = (
    "Agent",
    "Context",
    "Guards",
    "LimitReached",
    "Middleware",
    "Route",
    "Run",
    "Swarm",
    "WorkflowEnded",
    "current_run",
    "end_workflow",
    "handles",
    "result_from",
)
