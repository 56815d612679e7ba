"""Scripted and function models, and the switch that blocks real provider calls."""

from __future__ import annotations

import time

import pytest
from _vendor_fakes import PLAN, PLAN_JSON, Canned, FakeServer, Plan, openai_body, plan_request

from swarmbus.agents.models import (
    BLOCK_ENV,
    FunctionModel,
    ModelRequest,
    OpenAIModel,
    OutputValidationError,
    ProviderRateLimitError,
    RealModelCallBlocked,
    ScriptedModel,
    ScriptExhaustedError,
    block_real_models,
    build_model,
    real_models_blocked,
)
from swarmbus.protocols import ConfigError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


async def test_scripted_replies_of_every_kind() -> None:
    model = ScriptedModel([PLAN, PLAN_JSON, {"title": "t", "steps": []}, Plan(title="x", steps=[])])
    outputs = [(await model.complete(plan_request())).output for _ in range(4)]
    assert outputs[:2] == [PLAN, PLAN] and outputs[2].title == "t"
    assert model.remaining == 0 and len(model.requests) == 4
    response = await ScriptedModel([PLAN], name="demo:architect").complete(plan_request())
    p = response.provenance
    assert (p.provider, p.model, p.cost_usd, p.input_tokens) == ("demo", "architect", 0.0, 0)
    assert p.request_hash == plan_request().request_hash("demo:architect")
    assert response.usage.unpriced_calls == 0


async def test_scripted_exhausted() -> None:
    model = ScriptedModel([PLAN])
    await model.complete(plan_request())
    with pytest.raises(ScriptExhaustedError, match="all 1 scripted replies used"):
        await model.complete(plan_request())


async def test_scripted_exceptions_and_repair() -> None:
    model = ScriptedModel([ProviderRateLimitError("slow down"), '{"title": 1}', PLAN, "x", "y"])
    with pytest.raises(ProviderRateLimitError):
        await model.complete(plan_request())
    assert (await model.complete(plan_request())).output == PLAN  # invalid, then repaired
    assert "did not match" in model.requests[-1].messages[-1].content
    with pytest.raises(OutputValidationError):
        await model.complete(plan_request())


async def test_function_model_sync_async_and_latency() -> None:
    def reply(request: ModelRequest[Plan]) -> dict[str, object]:
        return {"title": request.messages[-1].content, "steps": []}

    async def areply(request: ModelRequest[Plan]) -> Plan:
        return PLAN

    out = await FunctionModel(reply).complete(plan_request("hello"))
    assert out.output.title == "hello"
    started = time.perf_counter()
    out = await FunctionModel(areply, latency_s=0.05, name="fn:slow").complete(plan_request())
    assert out.output == PLAN and time.perf_counter() - started >= 0.05
    assert out.provenance.latency_s >= 0.05


def test_offline_names_are_provider_model() -> None:
    with pytest.raises(ConfigError):
        ScriptedModel([], name="nocolon")


async def test_block_switch(
    fake: FakeServer, fake_keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.default = Canned(openai_body(PLAN_JSON))
    async with OpenAIModel("gpt-4o", base_url=fake.url + "/v1") as model:
        with block_real_models():
            assert real_models_blocked()
            with pytest.raises(RealModelCallBlocked, match=BLOCK_ENV):
                await model.complete(plan_request())
            # offline models are never blocked
            assert (await ScriptedModel([PLAN]).complete(plan_request())).output == PLAN
        assert len(fake.requests) == 0

        monkeypatch.setenv(BLOCK_ENV, "1")
        with block_real_models(False):  # the innermost setting wins over the environment
            assert (await model.complete(plan_request())).output == PLAN
        # the conftest allows calls for this test; without it the variable decides
        with block_real_models(True), pytest.raises(RealModelCallBlocked):
            await model.complete(plan_request())
    assert len(fake.requests) == 1


def test_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with block_real_models(None):  # the environment decides again
        monkeypatch.setenv(BLOCK_ENV, "1")
        assert real_models_blocked()
        monkeypatch.setenv(BLOCK_ENV, "0")
        assert not real_models_blocked()


async def test_blocked_before_any_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")
    model = build_model("openai:gpt-4o")  # the real endpoint: must never be reached
    async with model:
        with block_real_models(), pytest.raises(RealModelCallBlocked):
            await model.complete(plan_request())
