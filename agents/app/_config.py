"""``swarm.yaml``: one typed config, validated once at start, overridable by env.

Environment overrides use ``SWARMBUS_`` plus the path in upper case, with
``__`` between levels. A value is read as YAML only where the setting takes a
list or a mapping; everywhere else it is the raw string, so a password such as
``[pr0d]`` or ``s3cr3t: v2`` stays exactly that:

    SWARMBUS_NAMESPACE=prod
    SWARMBUS_NATS__SERVERS=nats://a:4222,nats://b:4222
    SWARMBUS_NATS__PASSWORD=...            (secrets: env or files only)
    SWARMBUS_ROLES__CODER__MODEL=anthropic:claude-haiku-4-5
"""

from __future__ import annotations

import importlib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarmbus.bus import ConsumerSettings, NatsSettings, StreamSettings
from swarmbus.protocols import ConfigError, check_namespace

from .._agent import Agent
from .._yaml import DuplicateKeyError, load_yaml, yaml_problem
from ..models import ModelConfig, ModelSettings
from ..sandbox import SandboxLimits
from ..workflow import DEFAULT_WORKFLOW
from ._config_paths import relative_to_file

__all__ = ["ENV_PREFIX", "CacheConfig", "RoleConfig", "SwarmConfig", "load_config"]

ENV_PREFIX = "SWARMBUS_"
NOT_CONFIG_ENV = frozenset({"SWARMBUS_BLOCK_REAL_MODELS", "SWARMBUS_PRICES_FILE"})
"""``SWARMBUS_*`` variables that are not ``swarm.yaml`` overrides (read elsewhere)."""


class RoleConfig(BaseModel):
    """One role of the workflow: its model (a name, a spec, or a fallback chain) and
    how it runs in this process."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig | None = Field(
        None, description="The role's model; None: steps that name none cannot run here.")
    run: bool | None = Field(
        None, description="Run the role in this process (default: when it has a model).")
    concurrency: int = Field(8, ge=1, description="Handlers in flight per replica.")
    replicas: int = Field(1, ge=1, description="Pull loops in this process (more: more processes).")
    ack_wait_s: float = Field(60, gt=0)
    max_deliver: int = Field(5, ge=2)
    settings: ModelSettings = Field(default_factory=ModelSettings)
    revise: Literal["edits", "whole"] = Field(
        "edits", description="How this role's steps revise their own code when the workflow "
        "does not say (a step's `revise`): edits, or every file whole.")

    def consumer(self) -> ConsumerSettings:
        return ConsumerSettings(
            concurrency=self.concurrency, ack_wait_s=self.ack_wait_s, max_deliver=self.max_deliver
        )


class CacheConfig(BaseModel):
    """The model response cache (a redelivered message does not pay twice)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    ttl_s: float = Field(7 * 24 * 3600, gt=0)
    share_across_workflows: bool = Field(
        False, description="Answer identical requests of different workflows from the cache.")


class SwarmConfig(BaseModel):
    """Everything ``swarmbus up`` needs. Unknown keys are errors (typos fail at start)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "default"
    nats: NatsSettings = Field(default_factory=NatsSettings)
    embedded: bool = Field(True, description="Start a local nats-server if `nats` is not set.")
    port: int = Field(4222, ge=0, le=65535, description="The embedded server's port.")
    data_dir: Path = Field(Path(".swarmbus"), description="The embedded server's data.")
    stream: StreamSettings = Field(default_factory=StreamSettings)
    workflow: str = Field(DEFAULT_WORKFLOW, description="A workflow file, or builtin:<name>.")
    roles: dict[str, RoleConfig] = Field(default_factory=dict)
    agents: list[str] = Field(
        default_factory=list, description="Custom agents by import path 'pkg.module:Class'."
    )
    cache: CacheConfig = Field(default_factory=CacheConfig)
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)
    grace_s: float = Field(30, ge=0, description="Shutdown: time for in-flight work.")
    offline: bool = Field(False, description="Use the demo's scripted models (no keys).")

    def client_nats(self) -> NatsSettings:
        """Where client commands (submit, status, ...) connect: ``nats.servers`` when
        set, else the embedded server this config starts (``nats://127.0.0.1:<port>``)."""
        if "servers" in self.nats.model_fields_set or not self.embedded:
            return self.nats
        return self.nats.model_copy(update={"servers": [f"nats://127.0.0.1:{self.port}"]})

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


def _wants_structure(path: list[str]) -> bool:
    """Whether the setting at ``path`` takes a list or mapping (so its env value is YAML)."""
    annotation: Any = SwarmConfig
    for part in path:
        annotation = _unwrap(annotation, part)
        if annotation is None:
            return True  # unknown: let validation name it
    return _structured(annotation)


def _unwrap(annotation: Any, part: str) -> Any:
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            field = option.model_fields.get(part)
            if field is not None:
                return field.annotation
        if typing.get_origin(option) is dict:
            return typing.get_args(option)[1]
    return None


def _options(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(o for a in typing.get_args(annotation) for o in _options(a))
    return (annotation,)


def _structured(annotation: Any) -> bool:
    for option in _options(annotation):
        if typing.get_origin(option) in (list, dict, tuple) or option in (list, dict):
            return True
        if isinstance(option, type) and issubclass(option, BaseModel):
            return True
    return False


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The override tree, and which variable set each path (to name it in errors)."""
    tree: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in NOT_CONFIG_ENV:
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not path or path[0] not in SwarmConfig.model_fields:
            known = ", ".join(SwarmConfig.model_fields)
            raise ConfigError(f"{key}: no such swarm.yaml setting (its keys: {known}; "
                              f"nested ones take __, as in {ENV_PREFIX}NATS__SERVERS)")
        value: Any = raw
        if raw and _wants_structure(path):
            try:
                parsed = load_yaml(raw)
            except DuplicateKeyError as e:  # not a raw string by mistake: a mistake
                raise ConfigError(f"{key}: {yaml_problem(e)}") from None
            except yaml.YAMLError:
                parsed = raw
            value = parsed if isinstance(parsed, list | dict | str) else raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        sources[tuple(path)] = key
    return tree, sources


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    path: str | Path | None = None, *, environ: dict[str, str] | None = None, **overrides: Any
) -> SwarmConfig:
    """Read ``path`` (YAML; optional), apply ``SWARMBUS_*`` env, then ``overrides``.

    Raises ``ConfigError`` naming the file (or the environment variable) and the
    field to change.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = load_yaml(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {yaml_problem(e)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
        data = relative_to_file(loaded or {}, p.parent)  # its paths: next to the file
    env, sources = _env_overrides(dict(os.environ if environ is None else environ))
    data = _merge(data, env)
    data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = SwarmConfig.model_validate(data)
        check_namespace(cfg.namespace)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        lines = []
        for err in e.errors(include_url=False)[:10]:
            loc = tuple(str(x) for x in err["loc"])
            var = next((v for p, v in sources.items() if loc[: len(p)] == p), None)
            shown = ".".join(loc) + (f" (from the environment variable {var})" if var else "")
            lines.append(f"{shown}: {err['msg'].removeprefix('Value error, ')}")
        if len(lines) == 1:  # one mistake, one line
            raise ConfigError(f"invalid swarm config{where}: {lines[0]}") from None
        body = "\n".join(f"  {line}" for line in lines)
        raise ConfigError(f"invalid swarm config{where}:\n{body}") from None
    except ConfigError as e:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid swarm config{where}: namespace: {e}") from None
    return cfg
