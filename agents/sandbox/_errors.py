from __future__ import annotations

from swarmbus.protocols import ConfigError

__all__ = ["SandboxUnavailableError"]


class SandboxUnavailableError(ConfigError):
    """The isolation the configuration asks for cannot run on this host (bubblewrap not
    installed or not permitted, no Landlock, a squatted sandbox directory). The message
    says what to install or change."""
