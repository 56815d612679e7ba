"""Relative paths in ``swarm.yaml`` mean "next to this file", not "where the command
runs": the config may be read from anywhere (``swarmbus up -c /etc/swarmbus/swarm.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PATH_KEYS", "relative_to_file"]

PATH_KEYS = frozenset({"workflow", "data_dir", "bwrap_path"})
"""Settings that hold a path, besides every ``*_file`` one (at any depth: ``nats``,
a model spec's ``api_key_file``, ...)."""


def relative_to_file(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``data`` (a config file's mapping) with every relative path setting joined to
    ``folder``, the file's directory. ``workflow: builtin:<name>`` is not a path."""
    return {key: _resolved(key, value, folder) for key, value in data.items()}


def _resolved(key: str, value: Any, folder: Path) -> Any:
    if isinstance(value, dict):
        return {k: _resolved(k, v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved("", v, folder) for v in value]
    is_path = key in PATH_KEYS or key.endswith("_file")
    if not is_path or not isinstance(value, str) or not value or value.startswith("builtin:"):
        return value
    path = Path(value)
    return value if path.is_absolute() else str(folder / path)
