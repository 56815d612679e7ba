"""Fallback chains: real SDK clients against failing loopback fakes, then offline models."""

from __future__ import annotations

import pytest
from _vendor_fakes import (
    PLAN,
    PLAN_JSON,
    Canned,
    FakeServer,
    anthropic_body,
    openai_body,
    openai_error,
    plan_request,
)

from swarmbus.agents.models import (
    AnthropicModel,
    FallbackExhaustedError,
    FallbackModel,
    FallbackSpec,
    ModelError,
    ModelSpec,
    OpenAIModel,
    OutputValidationError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    ScriptedModel,
    build_model,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "failure",
    [openai_error(429), openai_error(500), Canned(openai_body(PLAN_JSON), delay_s=5)],
    ids=["429", "500", "timeout"],
)
async def test_provider_failure_retried_then_falls_back(
    fake: FakeServer, fake2: FakeServer, fake_keys: str, failure: Canned
) -> None:
    fake.default = failure
    fake2.push(Canned(anthropic_body(PLAN_JSON)))
    primary = OpenAIModel("gpt-4o", base_url=fake.url + "/v1", max_retries=1, timeout_s=0.3)
    secondary = AnthropicModel("claude-haiku-4-5", base_url=fake2.url)
    async with FallbackModel([primary, secondary]) as chain:
        response = await chain.complete(plan_request())
    assert response.output == PLAN
    assert response.provenance.name == "anthropic:claude-haiku-4-5"
    assert response.provenance.tried == ["openai:gpt-4o"]
    assert len(fake.requests) == 2  # the SDK's one bounded retry, then the next model
    assert len(fake2.requests) == 1


async def test_all_fail(fake: FakeServer, fake2: FakeServer, fake_keys: str) -> None:
    fake.default = openai_error(503)
    fake2.default = Canned(openai_body(PLAN_JSON), delay_s=5)
    chain = build_model(
        [
            ModelSpec(name="openai:gpt-4o", base_url=fake.url + "/v1", max_retries=0),
            ModelSpec(name="vllm:qwen", base_url=fake2.url + "/v1", max_retries=0, timeout_s=0.2),
        ]
    )
    async with chain:
        with pytest.raises(FallbackExhaustedError) as caught:
            await chain.complete(plan_request())
    err = caught.value
    assert isinstance(err, ProviderError)
    assert [type(e) for e in err.errors] == [ProviderServerError, ProviderTimeoutError]
    assert "openai:gpt-4o" in str(err) and "vllm:qwen" in str(err)


async def test_cooldown_then_recovery(fake: FakeServer, fake_keys: str) -> None:
    clock = Clock()
    primary = OpenAIModel("gpt-4o", base_url=fake.url + "/v1", max_retries=0)
    backup = ScriptedModel([PLAN] * 10, name="local:backup")
    chain = FallbackModel(
        [primary, backup], cooldown_s=30, failures_before_cooldown=2, clock=clock
    )
    fake.default = openai_error(500)
    async with chain:
        for _ in range(2):
            response = await chain.complete(plan_request())
            assert response.provenance.tried == ["openai:gpt-4o"]
        assert chain.cooling_down() == ["openai:gpt-4o"]
        calls = len(fake.requests)
        response = await chain.complete(plan_request())  # primary skipped while cooling
        assert response.provenance.tried == [] and response.provenance.name == "local:backup"
        assert len(fake.requests) == calls

        clock.now += 31  # cool-down over: the primary is tried again, and has recovered
        fake.default = Canned(openai_body(PLAN_JSON))
        response = await chain.complete(plan_request())
        assert response.provenance.name == "openai:gpt-4o"
        assert chain.cooling_down() == []


async def test_all_cooling_down_still_tries() -> None:
    clock = Clock()
    flaky = ScriptedModel([ProviderServerError("down"), PLAN], name="a:flaky")
    chain = FallbackModel([flaky], cooldown_s=60, failures_before_cooldown=1, clock=clock)
    with pytest.raises(FallbackExhaustedError):
        await chain.complete(plan_request())
    assert chain.cooling_down() == ["a:flaky"]
    assert (await chain.complete(plan_request())).output == PLAN


async def test_output_errors_do_not_fall_back_by_default() -> None:
    bad = ScriptedModel(["nope", "still nope"], name="a:bad")
    good = ScriptedModel([PLAN], name="b:good")
    with pytest.raises(OutputValidationError):
        await FallbackModel([bad, good]).complete(plan_request())

    bad = ScriptedModel(["nope", "still nope"], name="a:bad")
    chain = FallbackModel([bad, good], fallback_on=(ModelError,))
    response = await chain.complete(plan_request())
    assert response.provenance.name == "b:good" and response.provenance.tried == ["a:bad"]


def test_fallback_spec_from_config() -> None:
    spec = FallbackSpec.model_validate(
        {"fallback": ["local:a", {"name": "local:b"}], "cooldown_s": 5}
    )
    assert spec.cooldown_s == 5 and isinstance(spec.fallback[1], ModelSpec)
