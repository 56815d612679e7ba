"""``swarm.yaml``: one typed config, validated once at start, overridable by env.

Environment overrides use ``SWARMBUS_`` plus the path in upper case, with
``__`` between levels; values are YAML (so lists and numbers work):

    SWARMBUS_NAMESPACE=prod
    SWARMBUS_NATS__SERVERS=nats://a:4222,nats://b:4222
    SWARMBUS_NATS__PASSWORD=...            (secrets: env or files only)
    SWARMBUS_ROLES__CODER__MODEL=anthropic:claude-sonnet-4-5
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarmbus.bus import ConsumerSettings, NatsSettings, StreamSettings
from swarmbus.protocols import ROLE_TOPICS, ConfigError

from .._agent import Agent
from .._sandbox import SandboxLimits
from ..models import ModelConfig, ModelSettings

__all__ = ["ENV_PREFIX", "RoleConfig", "SwarmConfig", "load_config"]

ENV_PREFIX = "SWARMBUS_"


class RoleConfig(BaseModel):
    """One built-in role: its model (a name, a spec, or a fallback chain) and how it runs."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig | None = Field(None, description="None: the role does not run here.")
    concurrency: int = Field(8, ge=1, description="Handlers in flight per replica.")
    replicas: int = Field(1, ge=1, description="Pull loops in this process (more: more processes).")
    ack_wait_s: float = Field(60, gt=0)
    max_deliver: int = Field(5, ge=2)
    settings: ModelSettings = Field(default_factory=ModelSettings)

    def consumer(self) -> ConsumerSettings:
        return ConsumerSettings(
            concurrency=self.concurrency, ack_wait_s=self.ack_wait_s, max_deliver=self.max_deliver
        )


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    ttl_s: float = Field(7 * 24 * 3600, gt=0)


class SwarmConfig(BaseModel):
    """Everything ``swarmbus up`` needs. Unknown keys are errors (typos fail at start)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "default"
    nats: NatsSettings = Field(default_factory=NatsSettings)
    embedded: bool = Field(True, description="Start a local nats-server if `nats` is not set.")
    data_dir: Path = Field(Path(".swarmbus"), description="The embedded server's data.")
    stream: StreamSettings = Field(default_factory=StreamSettings)
    roles: dict[str, RoleConfig] = Field(
        default_factory=lambda: {r: RoleConfig() for r in ROLE_TOPICS}
    )
    agents: list[str] = Field(
        default_factory=list, description="Custom agents by import path 'pkg.module:Class'."
    )
    cache: CacheConfig = Field(default_factory=CacheConfig)
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)
    grace_s: float = Field(30, ge=0, description="Shutdown: time for in-flight work.")
    offline: bool = Field(False, description="Use the demo's scripted models (no keys).")

    def custom_agents(self) -> list[Agent]:
        out = []
        for path in self.agents:
            module_name, _, attr = path.partition(":")
            if not attr:
                raise ConfigError(f"agent {path!r}: use 'package.module:ClassName'")
            try:
                cls = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as e:
                raise ConfigError(f"cannot import agent {path!r}: {e}") from e
            if not (isinstance(cls, type) and issubclass(cls, Agent)):
                raise ConfigError(f"{path!r} is not an Agent subclass")
            out.append(cls())
        return out


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not key.startswith(ENV_PREFIX) or not path or path[0] not in SwarmConfig.model_fields:
            continue  # e.g. SWARMBUS_BLOCK_REAL_MODELS is not config
        # YAML only for lists and mappings: scalars stay text, and pydantic converts them by
        # field type (a password of digits stays a string; "a,b" server lists split there).
        try:
            parsed = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            parsed = raw
        value = parsed if isinstance(parsed, (list, dict)) else raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    path: str | Path | None = None, *, environ: dict[str, str] | None = None, **overrides: Any
) -> SwarmConfig:
    """Read ``path`` (YAML; optional), apply ``SWARMBUS_*`` env, then ``overrides``.

    Raises ``ConfigError`` naming the file and the field to change.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
        data = loaded or {}
    data = _merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    try:
        return SwarmConfig.model_validate(data)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        lines = [
            f"  {'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:10]
        ]
        raise ConfigError(f"invalid swarm config{where}:\n" + "\n".join(lines)) from None
