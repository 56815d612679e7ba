"""The swarmbus runtime: agents, the swarm that runs them, roles, models, CLI."""

from ._agent import Agent, Context, handles
from ._swarm import Swarm

__all__ = ("Agent", "Context", "Swarm", "handles")
