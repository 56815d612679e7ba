"""The errors of the model layer, by who must act.

``ProviderError`` and its subclasses are failures outside swarmbus (rate
limits, timeouts, 5xx, unreachable servers): a ``FallbackModel`` moves to the
next model on them. Output errors (invalid, refused, truncated) are the
model's answer, not an outage, and are not retried on another model by
default. ``UnknownModelError`` and ``MissingAPIKeyError`` are config mistakes.
"""

from __future__ import annotations

from collections.abc import Sequence

from swarmbus.protocols import ConfigError, ExternalError, SwarmbusError

__all__ = [
    "CassetteMissError",
    "FallbackExhaustedError",
    "MissingAPIKeyError",
    "ModelError",
    "OutputTruncatedError",
    "OutputValidationError",
    "ProviderAuthError",
    "ProviderError",
    "ProviderRateLimitError",
    "ProviderServerError",
    "ProviderTimeoutError",
    "RealModelCallBlocked",
    "RefusalError",
    "ScriptExhaustedError",
    "UnknownModelError",
]


class ModelError(SwarmbusError):
    """Base of every error raised by a model."""

    def __init__(self, message: str, *, model: str = "") -> None:
        super().__init__(message)
        self.model = model


class ProviderError(ModelError, ExternalError):
    """The provider failed to answer (after the SDK's own bounded retries)."""

    def __init__(self, message: str, *, model: str = "", status_code: int | None = None) -> None:
        super().__init__(message, model=model)
        self.status_code = status_code


class ProviderRateLimitError(ProviderError):
    """HTTP 429 or a quota error."""


class ProviderTimeoutError(ProviderError, TimeoutError):
    """The request did not complete within its timeout."""


class ProviderServerError(ProviderError):
    """HTTP 5xx: the provider is down or overloaded."""


class ProviderAuthError(ProviderError):
    """HTTP 401/403: the key is wrong, expired or lacks access to this model."""


class FallbackExhaustedError(ProviderError):
    """Every model of a fallback chain failed; ``errors`` holds one error per model tried."""

    def __init__(self, message: str, *, model: str = "", errors: Sequence[ModelError]) -> None:
        super().__init__(message, model=model)
        self.errors = tuple(errors)


class OutputValidationError(ModelError, ValueError):
    """The output did not fit the output type, even after one repair attempt."""

    def __init__(self, message: str, *, model: str = "", raw_output: str = "") -> None:
        super().__init__(message, model=model)
        self.raw_output = raw_output


class RefusalError(ModelError):
    """The model (or the provider's safety filter) declined to answer."""

    def __init__(self, message: str, *, model: str = "", reason: str = "") -> None:
        super().__init__(message, model=model)
        self.reason = reason


class OutputTruncatedError(ModelError):
    """Generation stopped at the token limit; raise ``ModelSettings.max_tokens``."""


class RealModelCallBlocked(ModelError, RuntimeError):
    """A real provider was called while real model calls are blocked (test suites)."""


class ScriptExhaustedError(ModelError, LookupError):
    """A ``ScriptedModel`` was asked for more replies than it was given."""


class CassetteMissError(ModelError, LookupError):
    """A ``ReplayModel`` has no recorded response for this request."""

    def __init__(self, message: str, *, model: str = "", request_hash: str = "") -> None:
        super().__init__(message, model=model)
        self.request_hash = request_hash


class UnknownModelError(ConfigError, ModelError):
    """A model name names no known provider, or is not ``provider:model``."""


class MissingAPIKeyError(ConfigError, ModelError):
    """The API key for a provider is neither in its environment variable nor in its file."""
