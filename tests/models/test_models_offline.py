"""Scripted and function models, and the switch that blocks real provider calls."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import deque

import pytest
from _vendor_fakes import PLAN, PLAN_JSON, Canned, FakeServer, Plan, openai_body, plan_request

from swarmbus.agents.models import (
    BLOCK_ENV,
    Billed,
    FunctionModel,
    Ledger,
    ModelRequest,
    OpenAIModel,
    OutputValidationError,
    Price,
    ProviderRateLimitError,
    RealModelCallBlocked,
    Reply,
    ScriptedModel,
    ScriptExhaustedError,
    Unmetered,
    block_real_models,
    build_model,
    metered,
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


# -- offline billing: scripted costs sum exactly, like a provider's ------------------------


@pytest.mark.usefixtures("fresh_prices")
async def test_scripted_replies_are_billed_like_a_provider() -> None:
    replies: list[Reply] = [
        Billed("not json", input_tokens=1_000_000, output_tokens=8192),
        Billed(PLAN, input_tokens=1_000_000, output_tokens=8192, cached_tokens=400_000),
        Unmetered(PLAN),
        Billed(ProviderRateLimitError("slow down"), input_tokens=1000),
        ProviderRateLimitError("not billed"),
    ]
    model = ScriptedModel(replies, name="openai:gpt-4o")
    with metered(Ledger(scope="wf")) as ledger:
        first = await model.complete(plan_request())  # invalid, then repaired: two calls
        estimated = await model.complete(plan_request())
        with pytest.raises(ProviderRateLimitError) as billed:
            await model.complete(plan_request())
        with pytest.raises(ProviderRateLimitError) as free:
            await model.complete(plan_request())
    one_call = (1_000_000 * 2.5 + 8192 * 10.0) / 1e6
    repaired = (600_000 * 2.5 + 400_000 * 1.25 + 8192 * 10.0) / 1e6
    assert first.provenance.calls == 2
    assert first.usage.cost_usd == pytest.approx(one_call + repaired)
    assert estimated.provenance.estimated_calls == 1 and estimated.usage.priced_cost_usd > 0
    assert billed.value.usage.cost_usd == pytest.approx(1000 * 2.5 / 1e6)
    assert free.value.usage.calls == 0
    assert ledger.usage.calls == 4 and ledger.usage.estimated_calls == 1
    expected = (first.usage.priced_cost_usd + estimated.usage.priced_cost_usd
                + billed.value.usage.priced_cost_usd)
    assert ledger.usage.cost_usd == pytest.approx(expected)


async def test_offline_price_settings() -> None:
    tokens = Billed(PLAN, input_tokens=1_000_000, output_tokens=1_000_000)
    free = await ScriptedModel([tokens], name="scripted:model").complete(plan_request())
    assert free.provenance.cost_usd == 0.0 and free.provenance.input_tokens == 1_000_000
    unpriced = ScriptedModel([tokens], name="openai:gpt-4o", price="unpriced")
    response = await unpriced.complete(plan_request())
    assert response.provenance.cost_usd is None and response.usage.unpriced_calls == 1
    own = FunctionModel(lambda request: tokens, name="local:x", price=Price(input=1, output=2))
    assert (await own.complete(plan_request())).provenance.cost_usd == pytest.approx(3.0)


async def test_a_ledger_check_stops_an_offline_model() -> None:
    def stop(ledger: Ledger, model: str) -> None:
        raise RuntimeError(f"stop before {model}")

    model = ScriptedModel([PLAN], name="demo:coder")
    with metered(Ledger(check=stop)), pytest.raises(RuntimeError, match="demo:coder"):
        await model.complete(plan_request())
    assert model.remaining == 1 and model.requests == deque()


def test_helpers_import_without_pytest() -> None:
    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "from swarmbus.agents.testing import EmbeddedServer, ScriptedModel, Billed, new_namespace\n"
        "assert new_namespace().startswith('t')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
