"""OpenAI and OpenAI-compatible servers, through the real ``openai`` SDK against a loopback fake."""

from __future__ import annotations

import pytest
from _vendor_fakes import (
    PLAN,
    PLAN_JSON,
    SECRET,
    Canned,
    FakeServer,
    openai_body,
    openai_error,
    plan_request,
)

from swarmbus.agents.models import (
    ModelRequest,
    ModelSpec,
    OpenAIModel,
    OutputTruncatedError,
    OutputValidationError,
    Price,
    ProviderAuthError,
    ProviderRateLimitError,
    ProviderServerError,
    ProviderTimeoutError,
    RefusalError,
    build_model,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def gpt4o(fake: FakeServer, **kwargs: object) -> OpenAIModel:
    return OpenAIModel("gpt-4o", base_url=fake.url + "/v1", require_key=True, **kwargs)  # type: ignore[arg-type]


async def test_structured_output_parsed_usage_priced(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(openai_body(PLAN_JSON, prompt_tokens=1000, completion_tokens=500,
                                 cached_tokens=200)))
    async with gpt4o(fake) as model:
        response = await model.complete(plan_request(temperature=0.2))
    assert response.output == PLAN
    p = response.provenance
    assert (p.provider, p.model, p.name) == ("openai", "gpt-4o", "openai:gpt-4o")
    assert (p.input_tokens, p.output_tokens, p.cached_tokens) == (1000, 500, 200)
    # gpt-4o: 2.50 in, 1.25 cached, 10.00 out per million
    assert p.cost_usd == pytest.approx((800 * 2.5 + 200 * 1.25 + 500 * 10.0) / 1e6)
    assert p.request_hash == plan_request(temperature=0.2).request_hash("openai:gpt-4o")
    assert p.latency_s > 0 and not p.from_cache and p.tried == []
    seen = fake.requests[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {SECRET}"
    body = seen.body
    assert body["model"] == "gpt-4o"
    assert body["messages"][0] == {"role": "system", "content": "You plan."}
    assert body["temperature"] == 0.2
    assert body["max_completion_tokens"] == 8192 and "max_tokens" not in body
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert sorted(schema["required"]) == ["steps", "title"]


async def test_extra_allowing_models_get_closed_schemas(fake: FakeServer, fake_keys: str) -> None:
    from swarmbus.protocols import Verdict

    fake.push(Canned(openai_body('{"decision": "approve", "summary": "ok", "findings": []}')))
    request = ModelRequest(system="s", messages=plan_request().messages, output_type=Verdict)
    async with gpt4o(fake) as model:
        response = await model.complete(request)
    assert response.output.decision == "approve"
    schema = fake.requests[0].body["response_format"]["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Finding"]["additionalProperties"] is False


async def test_unknown_model_is_unpriced_not_free(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(openai_body(PLAN_JSON)))
    async with OpenAIModel("gpt-future-9", base_url=fake.url + "/v1") as model:
        response = await model.complete(plan_request())
    assert response.provenance.cost_usd is None
    assert response.usage.unpriced_calls == 1


async def test_rate_limit_retried_by_sdk_then_succeeds(fake: FakeServer, fake_keys: str) -> None:
    fake.push(openai_error(429), Canned(openai_body(PLAN_JSON)))
    async with gpt4o(fake, max_retries=1) as model:
        response = await model.complete(plan_request())
    assert response.output == PLAN
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, ProviderRateLimitError), (500, ProviderServerError), (503, ProviderServerError)],
)
async def test_persistent_errors_are_typed_after_bounded_retries(
    fake: FakeServer, fake_keys: str, status: int, error: type[Exception]
) -> None:
    fake.default = openai_error(status)
    async with gpt4o(fake, max_retries=1) as model:
        with pytest.raises(error) as caught:
            await model.complete(plan_request())
    assert len(fake.requests) == 2  # one try + max_retries
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert caught.value.model == "openai:gpt-4o"  # type: ignore[attr-defined]


async def test_timeout(fake: FakeServer, fake_keys: str) -> None:
    fake.default = Canned(openai_body(PLAN_JSON), delay_s=5)
    async with gpt4o(fake, max_retries=0) as model:
        with pytest.raises(ProviderTimeoutError):
            await model.complete(plan_request(timeout_s=0.2))
    assert isinstance(ProviderTimeoutError("x"), TimeoutError)


async def test_invalid_json_repaired(fake: FakeServer, fake_keys: str) -> None:
    fake.push(
        Canned(openai_body('{"title": "x", "steps": "not a list"}')),
        Canned(openai_body(PLAN_JSON, prompt_tokens=150, completion_tokens=30)),
    )
    async with gpt4o(fake) as model:
        response = await model.complete(plan_request())
    assert response.output == PLAN
    assert response.provenance.input_tokens == 250  # both attempts are paid for
    assert response.provenance.output_tokens == 50
    repair = fake.requests[1].body["messages"]
    assert repair[-2] == {"role": "assistant", "content": '{"title": "x", "steps": "not a list"}'}
    assert repair[-1]["role"] == "user" and "steps" in repair[-1]["content"]
    assert "did not match" in repair[-1]["content"]


async def test_invalid_twice_is_a_typed_error(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(openai_body("not json")), Canned(openai_body('{"title": 3}')))
    async with gpt4o(fake) as model:
        with pytest.raises(OutputValidationError) as caught:
            await model.complete(plan_request())
    assert caught.value.raw_output == '{"title": 3}'
    assert isinstance(caught.value, ValueError)
    assert len(fake.requests) == 2


async def test_refusal(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(openai_body(None, refusal="I can't help with that.")))
    async with gpt4o(fake) as model:
        with pytest.raises(RefusalError, match="can't help") as caught:
            await model.complete(plan_request())
    assert caught.value.reason == "I can't help with that."
    assert len(fake.requests) == 1  # a refusal is not "repaired"


async def test_content_filter_is_a_refusal(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(openai_body(None, finish_reason="content_filter")))
    async with gpt4o(fake) as model:
        with pytest.raises(RefusalError, match="content filter"):
            await model.complete(plan_request())


async def test_length_stop(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(openai_body('{"title": "x", "st', finish_reason="length")))
    async with gpt4o(fake) as model:
        with pytest.raises(OutputTruncatedError, match="max_tokens=50"):
            await model.complete(plan_request(max_tokens=50))
    assert len(fake.requests) == 1


async def test_auth_error_never_shows_the_key(fake: FakeServer, fake_keys: str) -> None:
    fake.default = Canned({"error": {"message": "bad key", "type": "auth"}}, status=401)
    model = build_model(ModelSpec(name="openai:gpt-4o", base_url=fake.url + "/v1"))
    async with model:
        with pytest.raises(ProviderAuthError) as caught:
            await model.complete(plan_request())
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    assert SECRET not in repr(model) and SECRET not in str(model)
    assert fake.requests[0].headers["authorization"] == f"Bearer {SECRET}"


async def test_local_server_by_base_url(fake: FakeServer, no_keys: None) -> None:
    fake.push(Canned(openai_body(PLAN_JSON)), Canned(openai_body(PLAN_JSON)))
    spec = ModelSpec(name="ollama:llama3.1", base_url=fake.url + "/v1")
    async with build_model(spec) as model:
        response = await model.complete(plan_request())
    assert response.provenance.name == "ollama:llama3.1"
    assert response.provenance.cost_usd is None  # unpriced until you price it
    body = fake.requests[0].body
    assert body["model"] == "llama3.1" and body["max_tokens"] == 8192
    assert "max_completion_tokens" not in body

    free = ModelSpec(
        name="openai-compatible:qwen2.5",
        base_url=fake.url + "/v1",
        price=Price(input=0, output=0),
        timeout_s=5,
    )
    async with build_model(free) as model:
        response = await model.complete(plan_request())
    assert response.provenance.cost_usd == 0.0
    assert response.provenance.provider == "openai-compatible"


async def test_borrowed_client_is_not_closed(fake: FakeServer, fake_keys: str) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0)
    fake.push(Canned(openai_body(PLAN_JSON)), Canned(openai_body(PLAN_JSON)))
    async with OpenAIModel("gpt-4o", client=client) as model:
        await model.complete(plan_request())
    assert not client.is_closed()
    async with OpenAIModel("gpt-4o", client=client) as model:
        await model.complete(plan_request())
    await client.close()
    assert client.is_closed()
