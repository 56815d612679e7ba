"""Models behind one typed interface: OpenAI (and OpenAI-compatible servers),
Anthropic, Google Gemini, offline scripted models, fallback chains, a response
cache, record/replay, and a price table.

Build from config with ``build_model("openai:gpt-4o")``; every answer is a
validated instance of the request's output type plus its provenance
(provider, model, tokens, cost, latency, request hash).
"""

import importlib as _importlib
import typing as _typing

from ._base import ChatMessage, Model, ModelRequest, ModelResponse, ModelSettings
from ._cache import CachedModel, MemoryStore, ResponseStore
from ._cassette import RecordingModel, ReplayModel
from ._errors import (
    CassetteMissError,
    FallbackExhaustedError,
    MissingAPIKeyError,
    ModelError,
    OutputTruncatedError,
    OutputValidationError,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimitError,
    ProviderServerError,
    ProviderTimeoutError,
    RealModelCallBlocked,
    RefusalError,
    ScriptExhaustedError,
    UnknownModelError,
)
from ._fallback import FallbackModel
from ._guard import BLOCK_ENV, block_real_models, real_models_blocked
from ._ledger import Ledger, current_ledger, metered
from ._names import qualify_model_name
from ._offline import FunctionModel, Reply, ScriptedModel
from ._prices import (
    PRICES_ENV,
    Price,
    PriceTable,
    cost_usd,
    load_prices,
    price_for,
    price_table,
    set_price,
)
from ._registry import (
    FallbackSpec,
    ModelConfig,
    ModelSpec,
    ProviderFactory,
    build_model,
    known_providers,
    register_provider,
)

__all__ = (
    "BLOCK_ENV",
    "PRICES_ENV",
    "AnthropicModel",
    "CachedModel",
    "CassetteMissError",
    "ChatMessage",
    "FallbackExhaustedError",
    "FallbackModel",
    "FallbackSpec",
    "FunctionModel",
    "GoogleModel",
    "Ledger",
    "MemoryStore",
    "MissingAPIKeyError",
    "Model",
    "ModelConfig",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "ModelSpec",
    "OpenAIModel",
    "OutputTruncatedError",
    "OutputValidationError",
    "Price",
    "PriceTable",
    "ProviderAuthError",
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
    "ScriptExhaustedError",
    "ScriptedModel",
    "UnknownModelError",
    "block_real_models",
    "build_model",
    "cost_usd",
    "current_ledger",
    "gemini_schema",
    "known_providers",
    "load_prices",
    "metered",
    "price_for",
    "price_table",
    "qualify_model_name",
    "real_models_blocked",
    "register_provider",
    "set_price",
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
    # The vendor SDKs take seconds to import; load them when a provider is used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
