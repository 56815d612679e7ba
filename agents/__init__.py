"""The swarmbus runtime (the kernel): agents, the swarm that runs them, middleware
and the guards every agent can use. Workflows and their step runtime are in
``swarmbus.agents.workflow``; models in ``swarmbus.agents.models``; the
``swarmbus`` application in ``swarmbus.agents.app``."""

from ._agent import Agent, Context, Middleware, Route, handles
from ._guards import Guards, LimitReached, WorkflowEnded, end_workflow, result_from
from ._swarm import Swarm

__all__ = (
    "Agent",
    "Context",
    "Guards",
    "LimitReached",
    "Middleware",
    "Route",
    "Swarm",
    "WorkflowEnded",
    "end_workflow",
    "handles",
    "result_from",
)
