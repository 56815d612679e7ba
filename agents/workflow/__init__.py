"""Workflows as data: loading and checking workflow files, and the generic step
runtime that runs any of them (one ``StepAgent`` per role, a ``Supervisor``).

``load_workflow("builtin:code-review")`` is the built-in architect -> coder ->
reviewer team; ``team(workflow, models=...)`` builds the agents that run one.
"""

from ._call import EDITS_ANSWER, FIRST_ANSWER, WHOLE_AGAIN, WHOLE_ANSWER, repair_text
from ._fanout import Fanouts
from ._load import (
    BUILTIN_PREFIX,
    DEFAULT_WORKFLOW,
    PRESETS,
    ModelCheck,
    RolePreset,
    builtin_workflows,
    check_models,
    compile_workflow,
    load_workflow,
    resolve_type,
)
from ._outcomes import outcome_rows
from ._parallel import Integrator, SandboxContract, contract_tests, integrate
from ._prompt import PromptError, render_system, render_work, report_text, work_parts
from ._registry import Workflows
from ._reuse import steady_inputs
from ._routing import ROUTERS_BUCKET, Routes, features_of
from ._show import mermaid, show_text
from ._step import StepAgent, StepCall
from ._supervisor import Supervisor
from ._team import default_tools, team
from ._tools import AcceptanceRunner, SandboxPytest, TestRunner, Tool, failing_tests_finding

__all__ = (
    "BUILTIN_PREFIX",
    "DEFAULT_WORKFLOW",
    "EDITS_ANSWER",
    "FIRST_ANSWER",
    "PRESETS",
    "ROUTERS_BUCKET",
    "WHOLE_AGAIN",
    "WHOLE_ANSWER",
    "AcceptanceRunner",
    "Fanouts",
    "Integrator",
    "ModelCheck",
    "PromptError",
    "RolePreset",
    "Routes",
    "SandboxContract",
    "SandboxPytest",
    "StepAgent",
    "StepCall",
    "Supervisor",
    "TestRunner",
    "Tool",
    "Workflows",
    "builtin_workflows",
    "check_models",
    "compile_workflow",
    "contract_tests",
    "default_tools",
    "failing_tests_finding",
    "features_of",
    "integrate",
    "load_workflow",
    "mermaid",
    "outcome_rows",
    "render_system",
    "render_work",
    "repair_text",
    "report_text",
    "resolve_type",
    "show_text",
    "steady_inputs",
    "team",
    "work_parts",
)
