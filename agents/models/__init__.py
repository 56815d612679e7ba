"""Models behind one typed interface: OpenAI (and OpenAI-compatible servers),
Anthropic, Google Gemini, offline scripted models, fallback chains, a response
cache, record/replay, and a price table.

Build from config with ``build_model("openai:gpt-4o")``; every answer is a
validated instance of the request's output type plus its provenance
(provider, model, tokens, cost, latency, request hash).

Money: every provider call is booked into the current ``Ledger`` (see
``metered``) as it happens, whatever happens next, and every ``ModelError``
carries the ``usage`` of its calls and whether it is ``permanent``. Start-up:
building a model reads its key but imports no SDK; ``Model.prepare()`` does.
"""

import importlib as _importlib
import typing as _typing

from ._base import (
    CACHE_BREAKPOINTS,
    ChatMessage,
    Model,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    Part,
)
from ._cache import CachedModel, MemoryStore, ResponseStore
from ._cassette import RecordingModel, ReplayModel
from ._errors import (
    CassetteMissError,
    FallbackExhaustedError,
    MissingAPIKeyError,
    MissingSDKError,
    ModelError,
    OutputTruncatedError,
    OutputValidationError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderEmptyReplyError,
    ProviderError,
    ProviderRateLimitError,
    ProviderServerError,
    ProviderTimeoutError,
    RealModelCallBlocked,
    RefusalError,
    ScriptExhaustedError,
    UnknownModelError,
)
from ._fallback import OUTPUT_ERRORS, FallbackModel
from ._guard import BLOCK_ENV, block_real_models, real_models_blocked
from ._ledger import (
    BYTES_PER_TOKEN_BOUND,
    MIN_OUTPUT_TOKENS,
    CallBound,
    Ledger,
    LimitReached,
    current_ledger,
    input_token_bound,
    metered,
)
from ._names import qualify_model_name
from ._offline import Billed, FunctionModel, OfflinePrice, Reply, ScriptedModel, Unmetered
from ._output import validate_output
from ._prices import (
    PRICES_ENV,
    Price,
    PriceTable,
    cost_text,
    cost_usd,
    is_priced,
    load_prices,
    price_for,
    price_table,
    set_price,
    using_prices,
)
from ._provider import CHARS_PER_TOKEN, PromptCache, merge_provenance
from ._registry import (
    FallbackSpec,
    ModelConfig,
    ModelSpec,
    ProviderFactory,
    RouteSpec,
    build_model,
    check_model,
    known_providers,
    register_provider,
    unregister_provider,
)
from ._routed import RouteConfig, RoutedModel, answering

__all__ = (
    "BLOCK_ENV",
    "BYTES_PER_TOKEN_BOUND",
    "CACHE_BREAKPOINTS",
    "CHARS_PER_TOKEN",
    "MIN_OUTPUT_TOKENS",
    "OUTPUT_ERRORS",
    "PRICES_ENV",
    "AnthropicModel",
    "Billed",
    "CachedModel",
    "CallBound",
    "CassetteMissError",
    "ChatMessage",
    "FallbackExhaustedError",
    "FallbackModel",
    "FallbackSpec",
    "FunctionModel",
    "GoogleModel",
    "Ledger",
    "LimitReached",
    "MemoryStore",
    "MissingAPIKeyError",
    "MissingSDKError",
    "Model",
    "ModelConfig",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "ModelSpec",
    "OfflinePrice",
    "OpenAIModel",
    "OutputTruncatedError",
    "OutputValidationError",
    "Part",
    "Price",
    "PriceTable",
    "PromptCache",
    "ProviderAuthError",
    "ProviderBadRequestError",
    "ProviderEmptyReplyError",
    "ProviderError",
    "ProviderFactory",
    "ProviderRateLimitError",
    "ProviderServerError",
    "ProviderTimeoutError",
    "RealModelCallBlocked",
    "RecordingModel",
    "RefusalError",
    "ReplayModel",
    "Reply",
    "ResponseStore",
    "RouteConfig",
    "RouteSpec",
    "RoutedModel",
    "ScriptExhaustedError",
    "ScriptedModel",
    "UnknownModelError",
    "Unmetered",
    "answering",
    "block_real_models",
    "build_model",
    "check_model",
    "cost_text",
    "cost_usd",
    "current_ledger",
    "gemini_schema",
    "input_token_bound",
    "is_priced",
    "known_providers",
    "load_prices",
    "merge_provenance",
    "metered",
    "price_for",
    "price_table",
    "qualify_model_name",
    "real_models_blocked",
    "register_provider",
    "set_price",
    "unregister_provider",
    "using_prices",
    "validate_output",
)

if _typing.TYPE_CHECKING:
    from ._anthropic import AnthropicModel
    from ._google import GoogleModel, gemini_schema
    from ._openai import OpenAIModel

_LAZY = {
    "AnthropicModel": "._anthropic",
    "GoogleModel": "._google",
    "gemini_schema": "._google",
    "OpenAIModel": "._openai",
}


def __getattr__(name: str) -> _typing.Any:
    # The adapters import no SDK (Model.prepare() does); this keeps even them off start-up.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
