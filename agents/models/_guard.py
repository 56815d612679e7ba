"""The switch that makes every real provider call fail (for test suites)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ._errors import RealModelCallBlocked

__all__ = ["BLOCK_ENV", "block_real_models", "check_real_call_allowed", "real_models_blocked"]

BLOCK_ENV = "SWARMBUS_BLOCK_REAL_MODELS"
_TRUE = frozenset({"1", "true", "yes", "on"})

_lock = threading.Lock()
_overrides: list[bool | None] = []


def real_models_blocked() -> bool:
    """True when real provider calls must fail: the innermost ``block_real_models``
    wins, else (or when it says None) the ``SWARMBUS_BLOCK_REAL_MODELS`` environment
    variable decides."""
    with _lock:
        setting = _overrides[-1] if _overrides else None
    if setting is not None:
        return setting
    return os.environ.get(BLOCK_ENV, "").strip().lower() in _TRUE


@contextmanager
def block_real_models(blocked: bool | None = True) -> Iterator[None]:
    """Block (or, with ``blocked=False``, allow) real provider calls inside the block;
    ``None`` lets the environment variable decide again.

    Process-wide, not per task: a test that blocks real calls blocks them for
    every agent it starts. Nests; the innermost wins.
    """
    with _lock:
        _overrides.append(blocked)
    try:
        yield
    finally:
        with _lock:
            _overrides.pop()


def check_real_call_allowed(model: str) -> None:
    """Raise ``RealModelCallBlocked`` if real calls are blocked; checked before every call."""
    if real_models_blocked():
        raise RealModelCallBlocked(
            f"real model call to {model!r} blocked (set {BLOCK_ENV}=0 or leave "
            "block_real_models() to allow it; use ScriptedModel, FunctionModel or "
            "ReplayModel in tests)",
            model=model,
        )
