"""The errors of the model layer, by who must act.

Every ``ModelError`` says two things the runtime acts on:

- ``permanent``: True when a second delivery cannot fix it (a wrong or revoked
  key, a bad request or unknown model, output that failed validation twice, a
  refusal, a truncated answer, a config mistake): end the workflow now, with
  the reason. False for outages a later attempt may not meet (rate limits,
  5xx, timeouts, connection errors, empty replies): retry, after
  ``ProviderError.retry_after_s`` when the provider said how long to wait.
- ``usage``: what the calls this error consumed were billed (tokens, USD,
  ``calls``), so an invalid, refused or truncated answer is never free. A
  ``FallbackExhaustedError`` carries the sum over the chain.

Messages never contain a configured secret: they pass through
``swarmbus.bus.scrub`` when the error is made, so a provider or proxy echoing
the key in an error body cannot put it in the exception text.

``ProviderError`` and its subclasses are failures outside swarmbus; a
``FallbackModel`` moves to the next model on them (and, if configured, on
output errors). ``UnknownModelError``, ``MissingAPIKeyError`` and
``MissingSDKError`` are config mistakes, raised at build time.
"""

from __future__ import annotations

from collections.abc import Sequence

from swarmbus.bus import scrub
from swarmbus.protocols import ConfigError, ExternalError, SwarmbusError, Usage

__all__ = [
    "CassetteMissError",
    "FallbackExhaustedError",
    "MissingAPIKeyError",
    "MissingSDKError",
    "ModelError",
    "OutputTruncatedError",
    "OutputValidationError",
    "ProviderAuthError",
    "ProviderBadRequestError",
    "ProviderEmptyReplyError",
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
    """Base of every error raised by a model.

    ``model`` is the ``provider:model`` name; ``usage`` what the calls that led
    here were billed (empty when none was); ``permanent`` whether retrying can
    help (the class default, unless given). The message is scrubbed of secrets.
    """

    permanent: bool = True

    def __init__(
        self,
        message: str,
        *,
        model: str = "",
        usage: Usage | None = None,
        permanent: bool | None = None,
    ) -> None:
        super().__init__(scrub(message))
        self.model = model
        self.usage = usage if usage is not None else Usage()
        if permanent is not None:
            self.permanent = permanent


class ProviderError(ModelError, ExternalError):
    """The provider failed to answer (after the SDK's own bounded retries).

    Transient unless a subclass (or ``permanent=``) says otherwise.
    ``status_code`` is the HTTP status when there was one; ``retry_after_s``
    (seconds) the wait the provider asked for (``Retry-After``,
    ``retry-after-ms``, or Gemini's ``RetryInfo.retryDelay``), None if it did not.
    """

    permanent = False

    def __init__(
        self,
        message: str,
        *,
        model: str = "",
        status_code: int | None = None,
        retry_after_s: float | None = None,
        usage: Usage | None = None,
        permanent: bool | None = None,
    ) -> None:
        super().__init__(message, model=model, usage=usage, permanent=permanent)
        self.status_code = status_code
        self.retry_after_s = retry_after_s


class ProviderRateLimitError(ProviderError):
    """HTTP 429 or a quota error. Transient; see ``retry_after_s``."""


class ProviderTimeoutError(ProviderError, TimeoutError):
    """The request did not complete within its timeout (or HTTP 408/504). Transient."""


class ProviderServerError(ProviderError):
    """HTTP 5xx (529: overloaded): the provider is down or overloaded. Transient."""


class ProviderEmptyReplyError(ProviderError):
    """HTTP 200 with nothing in it (no choices, or no candidates and no block
    reason): a provider glitch, not a refusal. Transient; booked if it carried usage."""


class ProviderAuthError(ProviderError):
    """HTTP 401/403 (or an invalid-key error): the key is wrong, expired or lacks
    access to this model. Permanent: never retried, not even by the SDK. The
    message names the provider and where the key came from, never the key."""

    permanent = True


class ProviderBadRequestError(ProviderError):
    """HTTP 400/404/413/422: the request or the model name is wrong. Permanent."""

    permanent = True


class FallbackExhaustedError(ProviderError):
    """Every model of a fallback chain failed; ``errors`` holds one error per model tried.

    ``usage`` is the sum of theirs; ``permanent`` only if every error was;
    ``retry_after_s`` the shortest wait asked for, if every transient error asked.
    """

    def __init__(self, message: str, *, model: str = "", errors: Sequence[ModelError]) -> None:
        errors = tuple(errors)
        total = Usage()
        for error in errors:
            total = total + error.usage
        transient = [e for e in errors if not e.permanent]
        waits = [getattr(e, "retry_after_s", None) for e in transient]
        known = [w for w in waits if w is not None]
        retry_after = min(known) if known and len(known) == len(waits) else None
        super().__init__(
            message,
            model=model,
            usage=total,
            retry_after_s=retry_after,
            permanent=bool(errors) and not transient,
        )
        self.errors = errors


class OutputValidationError(ModelError, ValueError):
    """The output did not fit the output type, even after one repair attempt. Permanent."""

    def __init__(
        self, message: str, *, model: str = "", raw_output: str = "", usage: Usage | None = None
    ) -> None:
        super().__init__(message, model=model, usage=usage)
        self.raw_output = scrub(raw_output)


class RefusalError(ModelError):
    """The model (or the provider's safety filter) declined to answer. Permanent."""

    def __init__(
        self, message: str, *, model: str = "", reason: str = "", usage: Usage | None = None
    ) -> None:
        super().__init__(message, model=model, usage=usage)
        self.reason = scrub(reason)


class OutputTruncatedError(ModelError):
    """Generation stopped at the token limit; raise ``ModelSettings.max_tokens``. Permanent.

    ``budget_tokens``: the call's ``max_tokens`` had been lowered to this so that its
    worst case fit the budget left (the budget, not the setting, cut it); else None.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str = "",
        usage: Usage | None = None,
        permanent: bool | None = None,
        budget_tokens: int | None = None,
    ) -> None:
        super().__init__(message, model=model, usage=usage, permanent=permanent)
        self.budget_tokens = budget_tokens


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


class MissingSDKError(ConfigError, ModelError):
    """The provider's SDK is not installed; the message has the ``pip install`` line."""
