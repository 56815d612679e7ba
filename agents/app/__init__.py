"""The swarmbus application: the ``swarmbus`` command, ``swarm.yaml``, building the
configured swarm, the offline demo, how workflows are shown, and ``swarmbus ui``.

It sits on the kernel (``swarmbus.agents``) and uses only its public surface.
"""

from ._cli import main
from ._config import ENV_PREFIX, RoleConfig, SwarmConfig, load_config
from ._demo import DEMO_TASKS, offline_models
from ._eval import interrupted_line
from ._logging import configure_logging
from ._render import progress_line, render_result, render_status, render_trail, trail_json
from ._team import build_agents
from ._ui_app import UI_PORT, serve_ui, ui_socket

__all__ = (
    "DEMO_TASKS",
    "ENV_PREFIX",
    "UI_PORT",
    "RoleConfig",
    "SwarmConfig",
    "build_agents",
    "configure_logging",
    "interrupted_line",
    "load_config",
    "main",
    "offline_models",
    "progress_line",
    "render_result",
    "render_status",
    "render_trail",
    "serve_ui",
    "trail_json",
    "ui_socket",
)
