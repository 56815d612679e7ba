"""The one base exception, and its families by who must act."""

from __future__ import annotations

__all__ = ["ConfigError", "ControlFlow", "ExternalError", "SwarmbusError"]


class SwarmbusError(Exception):
    """Base of every error swarmbus raises on purpose."""


class ConfigError(SwarmbusError, ValueError):
    """The user's mistake: bad config, unknown model, invalid name. Fix the input."""


class ExternalError(SwarmbusError):
    """A failure outside swarmbus: a provider down, NATS unreachable. Often transient."""


class ControlFlow(SwarmbusError):
    """A decision, not a fault: retry later, dead-letter this message."""
