"""What every vendor adapter shares: the SDK's presence, the API key and where it came
from, and a vendor's HTTP answer as a typed error (status, ``Retry-After``)."""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from swarmbus.bus import register_secret

from ._errors import (
    MissingAPIKeyError,
    MissingSDKError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderError,
    ProviderRateLimitError,
    ProviderServerError,
    ProviderTimeoutError,
)

__all__ = [
    "MAX_ERROR_CHARS",
    "ApiKey",
    "error_for_status",
    "no_retry_on_auth",
    "parse_retry_after",
    "require_sdk",
    "resolve_api_key",
]

MAX_ERROR_CHARS = 2000
"""Error texts are cut to this many characters."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key and where it came from (a variable's name or a file path), for messages."""

    value: SecretStr
    source: str


def require_sdk(module: str, *, provider: str, extra: str) -> None:
    """Raise ``MissingSDKError`` with the ``pip install`` line if ``module`` is not
    installed. Looks the module up without importing it (importing an SDK takes seconds)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingSDKError(
            f"the {provider} provider needs the {module!r} package, which is not installed: "
            f"pip install 'swarmbus[{extra}]'"
        )


def resolve_api_key(
    *,
    provider: str,
    env: str | None,
    file: str | os.PathLike[str] | None,
    default_envs: tuple[str, ...],
    required: bool,
) -> ApiKey | None:
    """The key from ``file``, else ``env``, else the provider's usual variables.

    Keys never come from config text itself, so a swarm.yaml can be shared. Every
    key found is registered with ``swarmbus.bus.register_secret`` (so it is
    scrubbed from every text swarmbus writes). Raises ``MissingAPIKeyError`` when
    ``file`` is unreadable or empty, or no key is found and one is ``required``.
    """
    if file is not None:
        try:
            key = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise MissingAPIKeyError(
                f"cannot read the {provider} API key file {os.fspath(file)!r}: {exc.strerror}"
            ) from None
        if key:
            register_secret(key, source=os.fspath(file))
            return ApiKey(SecretStr(key), os.fspath(file))
        raise MissingAPIKeyError(f"the {provider} API key file {os.fspath(file)!r} is empty")
    names = (env,) if env else default_envs
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            register_secret(value, source=name)
            return ApiKey(SecretStr(value), name)
    if required:
        raise MissingAPIKeyError(
            f"no API key for {provider}: set {' or '.join(names)} in the environment, "
            "or give api_key_env / api_key_file in the model spec"
        )
    return None


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP
    date), as the SDKs read them; None when absent or unreadable."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / scale
        except ValueError:
            if name == "retry-after":
                import email.utils

                try:
                    when = email.utils.parsedate_to_datetime(raw)
                except (TypeError, ValueError):
                    return None
                return max(0.0, when.timestamp() - time.time())
            continue
        if math.isfinite(value) and value >= 0:
            return value
    return None


def error_for_status(
    status: int,
    message: str,
    *,
    model: str,
    retry_after_s: float | None = None,
    key_source: str | None = None,
) -> ProviderError:
    """Map an HTTP status to the matching ``ProviderError`` subclass.

    401/403: ``ProviderAuthError`` naming ``key_source``; 400/404/413/422:
    ``ProviderBadRequestError``; 429: rate limit; 408/504: timeout; 5xx: server;
    409/425: transient ``ProviderError``; any other: permanent ``ProviderError``.
    """
    provider = model.partition(":")[0]
    if status in (401, 403):
        where = f" with the key from {key_source}" if key_source else ""
        text = (
            f"{model}: HTTP {status}: {provider} refused the credentials{where} "
            f"(permanent, not retried): {message}"
        )
        return ProviderAuthError(text[:MAX_ERROR_CHARS], model=model, status_code=status)
    text = f"{model}: HTTP {status}: {message}"[:MAX_ERROR_CHARS]
    kwargs: dict[str, Any] = {"model": model, "status_code": status, "retry_after_s": retry_after_s}
    if status == 429:
        return ProviderRateLimitError(text, **kwargs)
    if status in (408, 504):
        return ProviderTimeoutError(text, **kwargs)
    if status >= 500:
        return ProviderServerError(text, **kwargs)
    if status in (400, 404, 413, 422):
        return ProviderBadRequestError(text, **kwargs)
    return ProviderError(text, permanent=status not in (409, 425), **kwargs)


async def no_retry_on_auth(response: Any) -> None:
    """An httpx response hook: a 401/403 is never retried by the SDK, even when a proxy
    sends ``x-should-retry: true`` (which the OpenAI and Anthropic SDKs obey)."""
    if response.status_code in (401, 403) and "x-should-retry" in response.headers:
        del response.headers["x-should-retry"]
