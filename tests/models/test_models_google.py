"""Gemini, through the real ``google-genai`` SDK against a loopback fake."""

from __future__ import annotations

import pytest
from _vendor_fakes import (
    PLAN,
    PLAN_JSON,
    SECRET,
    Canned,
    FakeServer,
    gemini_body,
    gemini_error,
    plan_request,
)
from google import genai
from google.genai import types as genai_types
from pydantic import BaseModel

from swarmbus.agents.models import (
    GoogleModel,
    ModelRequest,
    ModelSpec,
    OutputTruncatedError,
    ProviderRateLimitError,
    ProviderServerError,
    RefusalError,
    build_model,
    gemini_schema,
)
from swarmbus.protocols import ConfigError, Design

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def gemini(fake: FakeServer, **kwargs: object) -> GoogleModel:
    return GoogleModel("gemini-2.5-pro", base_url=fake.url, **kwargs)  # type: ignore[arg-type]


async def test_structured_output(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(gemini_body(PLAN_JSON, prompt_tokens=1000, output_tokens=300,
                                 thoughts_tokens=200, cached_tokens=400)))
    async with gemini(fake) as model:
        response = await model.complete(plan_request(temperature=0.0))
    assert response.output == PLAN
    p = response.provenance
    assert p.name == "google:gemini-2.5-pro"
    assert (p.input_tokens, p.output_tokens, p.cached_tokens) == (1000, 500, 400)
    assert p.cost_usd == pytest.approx((600 * 1.25 + 400 * 0.125 + 500 * 10.0) / 1e6)
    seen = fake.requests[0]
    assert seen.path.endswith("/models/gemini-2.5-pro:generateContent")
    assert seen.headers["x-goog-api-key"] == SECRET
    config = seen.body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["maxOutputTokens"] == 8192 and config["temperature"] == 0.0
    schema = config["responseSchema"]
    assert set(schema["properties"]) == {"title", "steps"}
    assert seen.body["systemInstruction"]["parts"][0]["text"] == "You plan."


async def test_message_models_fit_gemini(fake: FakeServer, fake_keys: str) -> None:
    design = Design(summary="s", files=["a.py"])
    fake.push(Canned(gemini_body(design.model_dump_json())))
    request = ModelRequest(system="s", messages=plan_request().messages, output_type=Design)
    async with gemini(fake) as model:
        response = await model.complete(request)
    assert response.output == design
    assert "additionalProperties" not in str(fake.requests[0].body)


def test_dict_fields_are_rejected_up_front() -> None:
    class Bad(BaseModel):
        scores: dict[str, int]

    with pytest.raises(ConfigError, match=r"Bad\.scores.*list of objects"):
        gemini_schema(Bad)


async def test_repair(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(gemini_body("```json\nnope")), Canned(gemini_body(PLAN_JSON)))
    async with gemini(fake) as model:
        assert (await model.complete(plan_request())).output == PLAN
    contents = fake.requests[1].body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "RECITATION"])
async def test_refusals(fake: FakeServer, fake_keys: str, reason: str) -> None:
    fake.push(Canned(gemini_body(None, finish_reason=reason)))
    async with gemini(fake) as model:
        with pytest.raises(RefusalError, match=reason):
            await model.complete(plan_request())


async def test_blocked_prompt(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(gemini_body(None, block_reason="SAFETY")))
    async with gemini(fake) as model:
        with pytest.raises(RefusalError, match="prompt blocked"):
            await model.complete(plan_request())


async def test_max_tokens(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(gemini_body('{"title"', finish_reason="MAX_TOKENS")))
    async with gemini(fake) as model:
        with pytest.raises(OutputTruncatedError):
            await model.complete(plan_request())


async def test_errors_retried_then_typed(fake: FakeServer, fake_keys: str) -> None:
    fake.push(gemini_error(503), Canned(gemini_body(PLAN_JSON)))
    async with gemini(fake, max_retries=1, retry_delay_s=0.01) as model:
        assert (await model.complete(plan_request())).output == PLAN
        fake.default = gemini_error(429, "RESOURCE_EXHAUSTED")
        with pytest.raises(ProviderRateLimitError):
            await model.complete(plan_request())
    assert len(fake.requests) == 4
    fake.default = gemini_error(500, "INTERNAL")
    async with build_model(ModelSpec(name="google:gemini-2.5-flash", base_url=fake.url,
                                     max_retries=0)) as model:
        with pytest.raises(ProviderServerError):
            await model.complete(plan_request())


async def test_borrowed_client(fake: FakeServer) -> None:
    client = genai.Client(api_key="k", http_options=genai_types.HttpOptions(base_url=fake.url))
    fake.push(Canned(gemini_body(PLAN_JSON)))
    async with GoogleModel("gemini-2.5-flash", client=client) as model:
        assert (await model.complete(plan_request())).output == PLAN
    await client.aio.aclose()
    client.close()
