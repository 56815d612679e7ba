"""Models from config: ``"openai:gpt-4o"``, a ``ModelSpec``, or a fallback chain of them."""

from __future__ import annotations

import difflib
import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._base import Model
from ._cache import CachedModel, ResponseStore
from ._errors import MissingSDKError, ModelError, ProviderError, UnknownModelError
from ._fallback import OUTPUT_ERRORS, FallbackModel
from ._names import qualify_model_name
from ._prices import Price, price_for, price_table
from ._provider import PromptCache
from ._routed import RouteConfig, RoutedModel

__all__ = [
    "FallbackSpec",
    "ModelConfig",
    "ModelSpec",
    "ProviderFactory",
    "build_model",
    "check_model",
    "known_providers",
    "register_provider",
    "unregister_provider",
]


class ModelSpec(BaseModel):
    """One model, as a swarm.yaml holds it. Only ``name`` is required.

    Keys are never written here: ``api_key_env`` names the environment
    variable that holds the key, ``api_key_file`` a file that contains it
    (e.g. a mounted secret). Defaults: each provider's usual variable.
    """

    # hide_input_in_errors: a key pasted into config by mistake is not echoed back.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str = Field(description="'provider:model', e.g. 'openai:gpt-4o' or 'ollama:llama3.1'.")
    base_url: str | None = Field(None, description="Server URL, for local or proxy servers.")
    api_key_env: str | None = Field(None, description="Environment variable holding the key.")
    api_key_file: Path | None = Field(None, description="File holding the key.")
    timeout_s: float | None = Field(
        None, gt=0, description="Per-call timeout; overrides the request's when set."
    )
    max_retries: int = Field(
        0, ge=0, le=10, description="The SDK's own retries of 429 / 5xx / timeouts (a step "
        "retries transient failures itself, within its run's deadline)."
    )
    price: Price | None = Field(None, description="Overrides the price table for this model.")
    structured_output: Literal["auto", "native", "tool"] = Field(
        "auto", description="Anthropic only: structured outputs or a forced tool."
    )
    prompt_cache: PromptCache = Field(
        "5m", description="The provider's prompt cache: '5m' or '1h' entries (Anthropic "
        "breakpoints; OpenAI prompt_cache_key; Gemini explicit caches), or 'off'.")

    @field_validator("name")
    @classmethod
    def _provider_model(cls, value: str) -> str:
        provider, sep, model = value.partition(":")
        if not sep or not provider or not model:
            raise ValueError(
                f"model names are 'provider:model' (e.g. 'openai:gpt-4o'), got {value!r}"
            )
        return value

    @property
    def provider(self) -> str:
        return self.name.partition(":")[0]

    @property
    def model(self) -> str:
        return self.name.partition(":")[2]


FallbackOn: TypeAlias = Literal["provider", "output"]


class FallbackSpec(BaseModel):
    """A fallback chain: ``fallback`` models in order, with cool-down of failing ones.

    ``on`` says which failures move to the next model: ``provider`` (outages,
    rate limits, timeouts, empty replies, auth failures: the default) and
    ``output`` (output invalid after its repair attempt, cut off at the token
    limit, or refused). The calls a model made before the chain moved on are
    billed and counted against the budget either way.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    fallback: list[str | ModelSpec] = Field(min_length=1)
    on: list[FallbackOn] = Field(
        default_factory=lambda: list[FallbackOn](["provider"]),
        min_length=1,
        description="Failures that move on: 'provider' and/or 'output'.",
    )
    cooldown_s: float = Field(60.0, ge=0)
    failures_before_cooldown: int = Field(2, ge=1)

    def fallback_on(self) -> tuple[type[ModelError], ...]:
        """The exception types ``on`` names, for ``FallbackModel(fallback_on=...)``."""
        kinds: tuple[type[ModelError], ...] = ()
        if "provider" in self.on:
            kinds += (ProviderError,)
        if "output" in self.on:
            kinds += OUTPUT_ERRORS
        return kinds


class RouteSpec(BaseModel):
    """A step whose model a router chooses per task: ``{route: {candidates: [...], ...}}``
    (see ``RouteConfig``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    route: RouteConfig


ModelConfig: TypeAlias = str | ModelSpec | FallbackSpec | RouteSpec | list[str | ModelSpec]
"""What a role's ``model:`` can be in config: a name, a spec, a fallback chain, or a
route among candidates."""

ProviderFactory: TypeAlias = Callable[[ModelSpec], Model]

# OpenAI-compatible local servers: provider -> default base URL.
_LOCAL_SERVERS = {
    "ollama": "http://localhost:11434/v1",
    "vllm": "http://localhost:8000/v1",
    "llamacpp": "http://localhost:8080/v1",
    "lmstudio": "http://localhost:1234/v1",
}


class _SdkOptions(TypedDict):
    api_key_env: str | None
    api_key_file: Path | None
    timeout_s: float | None
    max_retries: int
    price: Price | None
    prompt_cache: PromptCache


def _sdk_options(spec: ModelSpec) -> _SdkOptions:
    """What every SDK-backed provider takes from a spec."""
    return {
        "api_key_env": spec.api_key_env,
        "api_key_file": spec.api_key_file,
        "timeout_s": spec.timeout_s,
        "max_retries": spec.max_retries,
        "price": spec.price,
        "prompt_cache": spec.prompt_cache,
    }


def _openai(spec: ModelSpec) -> Model:
    from ._openai import OpenAIModel  # imports no SDK: Model.prepare() does

    return OpenAIModel(spec.model, base_url=spec.base_url, **_sdk_options(spec))


def _compatible_url(spec: ModelSpec) -> str:
    base_url = spec.base_url or _LOCAL_SERVERS.get(spec.provider)
    if base_url is None:
        raise UnknownModelError(
            f"{spec.name!r} needs a base_url: give it one in its spec "
            f"({{name: {spec.name!r}, base_url: 'http://host:port/v1'}})"
        )
    return base_url


def _compatible(spec: ModelSpec) -> Model:
    from ._openai import OpenAIModel

    return OpenAIModel(
        spec.model, provider=spec.provider, base_url=_compatible_url(spec), require_key=False,
        **_sdk_options(spec),
    )


def _anthropic(spec: ModelSpec) -> Model:
    from ._anthropic import AnthropicModel

    return AnthropicModel(
        spec.model, base_url=spec.base_url, structured_output=spec.structured_output,
        **_sdk_options(spec),
    )


def _google(spec: ModelSpec) -> Model:
    from ._google import GoogleModel

    return GoogleModel(spec.model, base_url=spec.base_url, **_sdk_options(spec))


_VENDORS: dict[ProviderFactory, str] = {_openai: "openai", _anthropic: "anthropic",
                                        _google: "google"}
"""The vendors' own APIs, by factory, with the provider their models are priced under."""

_lock = threading.Lock()
_providers: dict[str, ProviderFactory] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "google": _google,
    "gemini": _google,
    "openai-compatible": _compatible,
    **dict.fromkeys(_LOCAL_SERVERS, _compatible),
}


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Make ``name:...`` model names build with ``factory(spec)`` (adds or replaces)."""
    if not name or ":" in name:
        raise ValueError(f"provider names are non-empty and have no ':', got {name!r}")
    with _lock:
        _providers[name] = factory


def unregister_provider(name: str) -> None:
    """Forget ``name`` (a provider added with ``register_provider``); no error if unknown."""
    with _lock:
        _providers.pop(name, None)


def known_providers() -> list[str]:
    with _lock:
        return sorted(_providers)


def _spec(config: str | ModelSpec) -> ModelSpec:
    if isinstance(config, ModelSpec):
        return config
    try:
        return ModelSpec(name=config)
    except ValueError as exc:
        raise UnknownModelError(
            f"model names are 'provider:model' (e.g. 'openai:gpt-4o'), got {config!r}"
        ) from exc


def _factory(spec: ModelSpec) -> ProviderFactory:
    """The provider that builds ``spec``; what ``build_model`` and ``check_model`` share.
    Raises ``UnknownModelError`` (an unknown provider, with the nearest known one)."""
    with _lock:
        factory = _providers.get(spec.provider)
        known = sorted(_providers)
    if factory is None:
        close = difflib.get_close_matches(spec.provider, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(
            f"unknown model provider {spec.provider!r} in {spec.name!r}.{hint} Known providers: "
            f"{', '.join(known)}. For any other OpenAI-compatible server name the model "
            "'openai-compatible:<model>' and give it a base_url, or register_provider()."
        )
    if factory is _compatible:
        _compatible_url(spec)
    return factory


def _build_one(config: str | ModelSpec) -> Model:
    spec = _spec(config)
    return _factory(spec)(spec)


def _leaves(config: Any) -> list[str | ModelSpec]:
    if isinstance(config, RouteSpec):
        return [leaf for c in _route_candidates(config.route) for leaf in _leaves(c)]
    if isinstance(config, FallbackSpec):
        return list(config.fallback)
    return list(config) if isinstance(config, list) else [config]


def _need_numpy() -> None:
    """Raises ``MissingSDKError`` (with the pip line) where numpy, which runs a router,
    is not installed."""
    if importlib.util.find_spec("numpy") is None:
        raise MissingSDKError("a routed step (model: {route: ...}) needs numpy: "
                              "pip install 'swarmbus[route]'")


def _route_candidates(config: RouteConfig) -> list[Any]:
    """A route's candidates as model configs (names, specs or chains), its rules checked
    against them. Raises ``UnknownModelError`` for a candidate given twice, an
    unknown ``best``, or a rule that names no feature, operator or candidate."""
    from pydantic import TypeAdapter, ValidationError

    adapter: TypeAdapter[Any] = TypeAdapter(str | ModelSpec | FallbackSpec | list[str | ModelSpec])
    try:
        specs = [adapter.validate_python(raw) for raw in config.candidates]
    except ValidationError as e:
        raise UnknownModelError(f"route: a candidate is not a model name, spec or chain: "
                                f"{e.errors(include_url=False)[0]['msg']}") from None
    names = [_first_name(s) for s in specs]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise UnknownModelError(f"route: candidate {twice!r} is given twice")
    if config.best is not None and qualify_model_name(config.best) not in names:
        raise UnknownModelError(f"route: best {config.best!r} is not one of the candidates "
                                f"{names}")
    if config.rules:
        _need_numpy()
        from swarmbus.agents.routing import parse_rules  # each rule, feature and model

        try:
            parse_rules(list(config.rules), names)
        except ValueError as e:
            raise UnknownModelError(str(e)) from None
    return specs


def check_model(config: ModelConfig) -> list[str]:
    """Check ``config`` as ``build_model`` resolves it, without building it: no key is
    read, no client created, no SDK imported (``swarmbus workflow check``).

    Returns one warning (one line) per model whose calls would be unpriced (no
    ``price`` in its spec, none in the price table; local servers included), and
    per model of a vendor's own API (openai, anthropic, google/gemini) that the
    price table does not list, with the nearest id it does list: a typo, or a
    model newer than the table (which runs, unpriced). Models of providers added
    with ``register_provider`` are not judged. Raises ``UnknownModelError`` where
    ``build_model`` would: a malformed name, an unknown provider (with the
    nearest known one), an OpenAI-compatible server without ``base_url``.
    """
    specs = [_spec(c) for c in _leaves(config)]
    found = [w for spec in specs if (w := _warning(spec, _factory(spec)))]
    if isinstance(config, RouteSpec):
        found += _router_warning(config.route)
    return found


BASELINE_ROUTERS = ("best", "cheapest", "random", "rule")


def _router_warning(config: RouteConfig) -> list[str]:
    """A route's ``router`` that is no baseline names a trained router: a name close to
    a baseline's is taken for a typo (``UnknownModelError``); any other is said to
    choose by its rules until a router of that name is stored."""
    name = config.router
    if name in BASELINE_ROUTERS:
        return []
    close = difflib.get_close_matches(name, BASELINE_ROUTERS, n=1, cutoff=0.75)
    if close:
        raise UnknownModelError(f"route: router {name!r} is no router: did you mean "
                                f"{close[0]!r}? (best, cheapest, random, rule, or the name of "
                                "a trained router)")
    until = "its rules choose" if config.rules else "always-best chooses (it has no rules)"
    return [f"route: router {name!r} is a trained router's name: until `swarmbus route train "
            f"--name {name} --activate` stores one in this namespace, {until}"]


def _warning(spec: ModelSpec, factory: ProviderFactory) -> str:
    vendor = _VENDORS.get(factory)
    if vendor is None and factory is not _compatible:
        return ""  # a registered provider: its model names and prices are its own
    name = f"{vendor}:{spec.model}" if vendor else spec.name  # as the built model is named
    if spec.price is not None or price_for(name) is not None:
        return ""
    if vendor is None:
        return (f"{spec.name!r} has no price: its calls are counted as unpriced and budgets "
                f"cannot see them; give it one in its spec ({{name: {spec.name!r}, price: "
                "{input: 0, output: 0}} for a free local model; USD per million tokens) or in "
                "SWARMBUS_PRICES_FILE")
    ids = [n.partition(":")[2] for n in price_table().names() if n.startswith(f"{vendor}:")]
    close = difflib.get_close_matches(spec.model, ids, n=1, cutoff=0.5)
    near = f"did you mean {close[0]!r}?" if close else f"it lists {', '.join(ids)}"
    return (f"{spec.name!r} is not a model the price table lists for {vendor} ({near}); a "
            "model newer than the table runs, unpriced: budgets cannot see its calls; price it "
            f"in its spec ({{name: {spec.name!r}, price: {{input: USD, output: USD}}}}, per "
            "million tokens) or in SWARMBUS_PRICES_FILE")


def _routed(config: RouteConfig) -> RoutedModel:
    """A ``RoutedModel`` of ``config``'s candidates, each built as any model (a name, a
    spec or a chain), named by its first model. Raises ``UnknownModelError`` as
    ``_route_candidates`` does, ``MissingSDKError`` without numpy (the ``route``
    extra)."""
    _need_numpy()
    specs = _route_candidates(config)
    _router_warning(config)  # a typo of a baseline's name is refused here too
    candidates = {_first_name(s): build_model(s) for s in specs}
    try:
        return RoutedModel(config, candidates)
    except ValueError as e:
        raise UnknownModelError(f"route: {e}") from None


def _first_name(spec: Any) -> str:
    if isinstance(spec, str):
        return qualify_model_name(spec)
    if isinstance(spec, ModelSpec):
        return qualify_model_name(spec.name)
    if isinstance(spec, FallbackSpec):
        return _first_name(spec.fallback[0])
    return _first_name(spec[0])


def build_model(
    config: ModelConfig,
    *,
    cache: ResponseStore | None = None,
    cache_ttl_s: float | None = None,
    cache_shared: bool = False,
) -> Model:
    """Build a model from config.

    ``config`` is a ``provider:model`` string, a ``ModelSpec``, a list of them
    (a fallback chain with default cool-down) or a ``FallbackSpec``. With
    ``cache``, the result is wrapped in ``CachedModel(model, cache,
    ttl_s=cache_ttl_s, shared=cache_shared)``. Keys are read (and registered
    for scrubbing) now, so a missing key fails at start-up; SDKs are not
    imported (``Model.prepare`` does that), only looked up.

    Raises ``UnknownModelError`` for an unknown provider or a malformed name,
    ``MissingAPIKeyError`` when a provider's key is not set, ``MissingSDKError``
    (with the ``pip install`` line) when its SDK is not installed.
    """
    model: Model
    if isinstance(config, RouteSpec):
        model = _routed(config.route)
    elif isinstance(config, FallbackSpec):
        model = FallbackModel(
            [_build_one(s) for s in config.fallback],
            cooldown_s=config.cooldown_s,
            failures_before_cooldown=config.failures_before_cooldown,
            fallback_on=config.fallback_on(),
        )
    elif isinstance(config, list):
        chain = [_build_one(s) for s in config]
        model = chain[0] if len(chain) == 1 else FallbackModel(chain)
    else:
        model = _build_one(config)
    if cache is not None:
        model = CachedModel(model, cache, ttl_s=cache_ttl_s, shared=cache_shared)
    return model
