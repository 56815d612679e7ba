"""Optional dependencies of the eval harness, imported only when a command needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from swarmbus.protocols import ConfigError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ConfigError):
    """An optional dependency is not installed; the message has the ``pip install``
    line of the extra that brings it (``swarmbus[eval]``, ``swarmbus[plot]``)."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` for ``purpose``, or raise ``MissingExtraError`` naming
    ``pip install 'swarmbus[<extra>]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs {module.partition('.')[0]}, which is not installed: "
            f"pip install 'swarmbus[{extra}]'") from None
