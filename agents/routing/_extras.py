"""Optional dependencies of routing: numpy (inference), scikit-learn (training),
matplotlib (the frontier plot), each imported only where it is needed."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["missing_extra", "require"]

_DIST = {"sklearn": "scikit-learn"}  # import name -> the name pip knows


def missing_extra(module: str, extra: str, purpose: str) -> Exception:
    """The ``MissingExtraError`` (a ``ConfigError``) naming the ``pip install`` line."""
    from ..eval import MissingExtraError  # only when one is missing: eval is heavier

    top = module.partition(".")[0]
    return MissingExtraError(
        f"{purpose} needs {_DIST.get(top, top)}, which is not installed: "
        f"pip install 'swarmbus[{extra}]'")


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` for ``purpose``, or raise ``MissingExtraError`` with the line
    ``pip install 'swarmbus[<extra>]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(module, extra, purpose) from None
