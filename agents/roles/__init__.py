"""The built-in team: Architect, Coder, Reviewer (prompts in ``prompts/``)."""

from ._base import CACHE_BUCKET, RoleAgent, WorkflowEnded, result_from
from ._team import Architect, Coder, Reviewer

__all__ = (
    "CACHE_BUCKET",
    "Architect",
    "Coder",
    "Reviewer",
    "RoleAgent",
    "WorkflowEnded",
    "result_from",
)
