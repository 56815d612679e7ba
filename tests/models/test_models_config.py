"""Models from config strings and specs; the price table; the public surface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _vendor_fakes import SECRET

import swarmbus.agents.models as models
from swarmbus.agents.models import (
    PRICES_ENV,
    AnthropicModel,
    FallbackModel,
    FallbackSpec,
    GoogleModel,
    MissingAPIKeyError,
    Model,
    ModelSpec,
    OpenAIModel,
    Price,
    PriceTable,
    ScriptedModel,
    UnknownModelError,
    build_model,
    cost_usd,
    is_priced,
    known_providers,
    load_prices,
    price_for,
    register_provider,
    set_price,
    unregister_provider,
    using_prices,
)
from swarmbus.protocols import ConfigError


@pytest.mark.parametrize(
    ("name", "kind", "provider"),
    [
        ("openai:gpt-4o", OpenAIModel, "openai"),
        ("anthropic:claude-haiku-4-5", AnthropicModel, "anthropic"),
        ("google:gemini-2.5-pro", GoogleModel, "google"),
        ("gemini:gemini-2.5-flash", GoogleModel, "google"),
        ("ollama:llama3.1", OpenAIModel, "ollama"),
        ("vllm:Qwen/Qwen2.5-7B-Instruct", OpenAIModel, "vllm"),
        ("llamacpp:local", OpenAIModel, "llamacpp"),
    ],
)
def test_build_from_strings(name: str, kind: type[Model], provider: str, fake_keys: str) -> None:
    model = build_model(name)
    assert isinstance(model, kind)
    assert model.provider == provider  # type: ignore[attr-defined]
    assert SECRET not in repr(model)


def test_local_servers_default_urls(no_keys: None) -> None:
    model = build_model("ollama:llama3.1")
    assert isinstance(model, OpenAIModel) and model.base_url == "http://localhost:11434/v1"
    with pytest.raises(UnknownModelError, match="needs a base_url"):
        build_model("openai-compatible:foo")


def test_unknown_provider_is_helpful() -> None:
    with pytest.raises(UnknownModelError) as caught:
        build_model("anthropc:claude-haiku-4-5")
    message = str(caught.value)
    assert "Did you mean 'anthropic'" in message and "openai-compatible" in message
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)
    with pytest.raises(UnknownModelError, match="provider:model"):
        build_model("gpt-4o")


def test_missing_key_fails_at_build(no_keys: None, tmp_path: Path) -> None:
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
        build_model("openai:gpt-4o")
    with pytest.raises(MissingAPIKeyError, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        build_model("google:gemini-2.5-pro")
    with pytest.raises(MissingAPIKeyError, match="MY_KEY"):
        build_model(ModelSpec(name="anthropic:claude-haiku-4-5", api_key_env="MY_KEY"))
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    spec = ModelSpec(name="anthropic:claude-haiku-4-5", api_key_file=key_file)
    model = build_model(spec)
    assert SECRET not in repr(model) and SECRET not in repr(spec)
    with pytest.raises(MissingAPIKeyError, match="cannot read"):
        build_model(ModelSpec(name="openai:gpt-4o", api_key_file=tmp_path / "absent"))


def test_spec_validation() -> None:
    spec = ModelSpec.model_validate({"name": "openai:gpt-4o", "timeout_s": 30, "max_retries": 0})
    assert (spec.provider, spec.model) == ("openai", "gpt-4o")
    with pytest.raises(ValueError, match="provider:model"):
        ModelSpec(name="gpt-4o")
    with pytest.raises(ValueError, match="api_key"):
        ModelSpec.model_validate({"name": "openai:gpt-4o", "api_key": "sk-inline"})


def test_chains_and_custom_providers(fake_keys: str) -> None:
    chain = build_model(["openai:gpt-4o", "anthropic:claude-haiku-4-5", "ollama:llama3.1"])
    assert isinstance(chain, FallbackModel)
    assert chain.name == "fallback:openai:gpt-4o,anthropic:claude-haiku-4-5,ollama:llama3.1"
    spec_chain = build_model(FallbackSpec(fallback=["ollama:a", "ollama:b"], cooldown_s=7))
    assert isinstance(spec_chain, FallbackModel) and spec_chain.cooldown_s == 7
    assert isinstance(build_model(["ollama:a"]), OpenAIModel)

    register_provider("demo", lambda spec: ScriptedModel([], name=spec.name))
    try:
        assert "demo" in known_providers()
        assert isinstance(build_model("demo:architect"), ScriptedModel)
    finally:
        unregister_provider("demo")
    assert "demo" not in known_providers()


@pytest.mark.usefixtures("fresh_prices")
def test_prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpt4o = price_for("openai:gpt-4o")
    assert gpt4o is not None
    assert (gpt4o.input, gpt4o.output, gpt4o.cached_input) == (2.5, 10.0, 1.25)
    assert price_for("openai:gpt-4o-2024-08-06") == price_for("openai:gpt-4o")  # snapshot
    assert price_for("openai:gpt-4o-mini") != price_for("openai:gpt-4o")
    assert price_for("local:unknown") is None
    assert cost_usd("local:unknown", input_tokens=1, output_tokens=1) is None
    assert cost_usd("openai:gpt-4o", input_tokens=1_000_000, output_tokens=0) == 2.5
    set_price("ollama:llama3.1", input=0, output=0)
    assert cost_usd("ollama:llama3.1", input_tokens=10, output_tokens=10) == 0.0
    set_price("openai:gpt-4o", input=1, output=2)  # override; cached billed as input
    assert cost_usd("openai:gpt-4o", input_tokens=10**6, output_tokens=10**6,
                    cached_tokens=10**6) == 3.0
    extra = tmp_path / "prices.json"
    extra.write_text(json.dumps({"models": {"vllm:qwen": {"input": 0.1, "output": 0.2}}}))
    load_prices(extra)
    assert price_for("vllm:qwen") == Price(input=0.1, output=0.2)
    assert is_priced("vllm:qwen") and not is_priced("local:unknown")
    extra.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid price file"):
        load_prices(extra)
    with pytest.raises(ConfigError):
        set_price("no-provider", input=1, output=1)


def test_prices_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "prices.json"
    extra.write_text(json.dumps({"openai:gpt-4o": {"input": 9, "output": 9}}))
    monkeypatch.setenv(PRICES_ENV, str(extra))
    with using_prices(PriceTable.shipped()):
        assert price_for("openai:gpt-4o") == Price(input=9, output=9)
        assert is_priced("openai:gpt-4o")
        assert price_for("openai:gpt-4o-mini") is not None  # shipped prices still there


def test_public_surface() -> None:
    assert isinstance(models.__all__, tuple)
    assert list(models.__all__) == sorted(models.__all__, key=lambda n: (not n.isupper(), n))
    for name in models.__all__:
        assert getattr(models, name) is not None
    public = {n for n in dir(models) if not n.startswith("_")}
    assert public - set(models.__all__) == set()
