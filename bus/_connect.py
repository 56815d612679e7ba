"""Connecting to NATS with the options real deployments need."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import anyio
import nats
import nkeys  # type: ignore[import-untyped]
import structlog
from nats.aio.client import Client as NATS
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from swarmbus.protocols import ConfigError, ExternalError

from ._secrets import register_secret

__all__ = ["BusUnavailableError", "NatsSettings", "connect"]

log = structlog.get_logger("swarmbus.bus")

DEFAULT_URL = "nats://127.0.0.1:4222"
_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})


class BusUnavailableError(ExternalError, ConnectionError):
    """NATS could not be reached (or refused us) within the start-up timeout."""


class NatsSettings(BaseModel):
    """How to reach NATS. Secrets are ``SecretStr`` (never printed) or file paths."""

    model_config = ConfigDict(extra="forbid")

    servers: list[str] = Field(default_factory=lambda: [DEFAULT_URL])
    name: str = "swarmbus"
    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(None, description="A file holding the password.")
    token: SecretStr | None = None
    token_file: Path | None = Field(None, description="A file holding the token.")
    creds_file: Path | None = Field(None, description="A .creds file (JWT + nkey seed).")
    nkey_seed_file: Path | None = Field(None, description="A file holding an nkey seed.")
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    inbox_prefix: str = Field(
        "_INBOX", pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$",
        description="Reply subjects start with this; a user limited by subject permissions "
        "gets its own (e.g. _INBOX_auditor) so it cannot subscribe to other clients' replies.",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Give up at start after this long.")
    reconnect_wait_s: float = Field(1.0, gt=0)

    @field_validator("servers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("servers")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one NATS server URL is needed")
        for url in v:
            scheme, sep, rest = url.partition("://")
            if not sep or scheme not in _SCHEMES or not rest:
                raise ValueError(f"{_shown([url])} is not a NATS URL: use nats://host:4222 "
                                 "(or tls://, ws://, wss://)")
        return v

    def secret(self, name: str) -> str | None:
        """The password or token: the setting itself, else read from its ``*_file``
        (stripped). Raises ``ConfigError`` when the file cannot be read."""
        value: SecretStr | None = getattr(self, name)
        path: Path | None = getattr(self, f"{name}_file")
        if value is not None:
            return value.get_secret_value()
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"cannot read the NATS {name} file {path}: {e.strerror}") from None

    def setting(self, name: str) -> str:
        """Where the password or token came from, for messages: ``nats.password``
        (``SWARMBUS_NATS__PASSWORD`` in the daemon) or ``nats.password_file (PATH)``."""
        path: Path | None = getattr(self, f"{name}_file")
        if getattr(self, name) is None and path is not None:
            return f"nats.{name}_file ({path})"
        return f"nats.{name}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca_file or self.tls_cert_file):
            if any(s.startswith("tls://") for s in self.servers):
                return ssl.create_default_context()
            return None
        ctx = ssl.create_default_context(
            cafile=str(self.tls_ca_file) if self.tls_ca_file else None
        )
        if self.tls_cert_file:
            ctx.load_cert_chain(
                str(self.tls_cert_file), str(self.tls_key_file) if self.tls_key_file else None
            )
        return ctx


async def connect(settings: NatsSettings | None = None, **callbacks: Any) -> NATS:
    """Connect, failing with ``BusUnavailableError`` after ``connect_timeout_s``.

    Once connected, the client reconnects forever (every ``reconnect_wait_s``),
    so a server restart is survived. ``callbacks`` pass through to nats-py
    (``reconnected_cb``, ``disconnected_cb``...).
    """
    s = settings or NatsSettings()
    for path in (s.creds_file, s.nkey_seed_file, s.tls_ca_file, s.tls_cert_file):
        if path is not None and not path.is_file():
            raise ConfigError(f"NATS credential file not found: {path}")
    opts: dict[str, Any] = {
        "servers": s.servers,
        "name": s.name,
        "inbox_prefix": s.inbox_prefix,
        "connect_timeout": max(1, int(s.connect_timeout_s)),
        "reconnect_time_wait": s.reconnect_wait_s,
        "max_reconnect_attempts": -1,
        "allow_reconnect": True,
        "error_cb": _on_error,
    }
    password, token = s.secret("password"), s.secret("token")
    register_secret(password, source=s.setting("password"))
    register_secret(token, source=s.setting("token"))
    for i, url in enumerate(s.servers):  # nats://user:password@host, nats://token@host
        register_secret(_url_secret(url), source=f"nats.servers[{i}] (the URL's credentials)")
    for path in (s.creds_file, s.nkey_seed_file):  # the nkey seed inside never leaves either
        if path is not None:
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip().startswith("SU"):
                    register_secret(line.strip(), source=str(path))
    if s.user is not None:
        opts["user"] = s.user
        opts["password"] = password or ""
    if token is not None:
        opts["token"] = token
    if s.creds_file is not None:
        opts["user_credentials"] = str(s.creds_file)
    if s.nkey_seed_file is not None:
        opts["nkeys_seed"] = str(s.nkey_seed_file)
    tls = s.tls_context()
    if tls is not None:
        opts["tls"] = tls
    opts.update(callbacks)

    nc = NATS()
    errors: list[BaseException] = []
    user_error_cb = opts["error_cb"]
    refused = anyio.CancelScope()
    connecting = anyio.get_current_task().id

    async def on_error(e: Exception) -> None:
        if not nc.is_connected and not errors_done:
            errors.append(e)  # start-up: reported once, in BusUnavailableError
            if _is_auth_error(e):  # nats-py would retry until the timeout: fail now instead
                if anyio.get_current_task().id == connecting:
                    raise _Refused  # out of nc.connect(), which leaves the socket to close()
                refused.cancel()
        else:
            await user_error_cb(e)

    errors_done = False
    opts["error_cb"] = on_error
    try:
        with anyio.fail_after(s.connect_timeout_s), refused:
            await nc.connect(**opts)
    except _Refused:
        refused.cancel()
    except (TimeoutError, OSError, nats.errors.Error) as e:
        await _quiet_close(nc)
        last = errors[-1] if errors else e
        raise BusUnavailableError(
            f"cannot reach NATS at {_shown(s.servers)} within {s.connect_timeout_s:g}s: "
            f"{_describe(last)}. Is a server running? `swarmbus nats` starts one locally."
        ) from e
    except nkeys.NkeysError as e:
        await _quiet_close(nc)
        raise ConfigError(f"invalid NATS nkey seed or credentials file: {e!r}") from e
    if refused.cancel_called:
        await _quiet_close(nc)
        raise BusUnavailableError(
            f"NATS at {_shown(s.servers)} refused the connection: "
            f"{_describe(next(e for e in errors if _is_auth_error(e)))}"
        )
    errors_done = True
    return nc


class _Refused(Exception):
    pass


def _shown(servers: list[str]) -> str:
    """The URLs for messages, without credentials (nats://user:***@host:4222)."""
    return ", ".join(re.sub(r"^([a-z]+://)(?:([^:@/]*):)?[^@/]*@", _hide, u) for u in servers)


def _url_secret(url: str) -> str | None:
    """The password (or token) in a server URL's user info, if any."""
    m = re.match(r"^[a-z]+://([^@/]*)@", url)
    if m is None:
        return None
    user, sep, password = m[1].partition(":")
    return password if sep else user


def _hide(m: re.Match[str]) -> str:
    return f"{m[1]}{m[2]}:***@" if m[2] is not None else f"{m[1]}***@"


def _is_auth_error(e: BaseException) -> bool:
    text = str(e).lower()
    return "authorization violation" in text or "authentication" in text


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if _is_auth_error(e):
        return (f"authorization failed ({text}): check the user/password, token, nkey seed "
                "or credentials file, and that this user may connect")
    return text


async def _on_error(e: Exception) -> None:
    log.warning("nats error", error=_describe(e))


async def _quiet_close(nc: NATS) -> None:
    try:
        with anyio.move_on_after(1):
            await nc.close()
    except Exception:  # closing a half-open client may fail in many ways
        pass
