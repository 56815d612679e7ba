"""Anthropic, through the real ``anthropic`` SDK against a loopback fake."""

from __future__ import annotations

import pytest
from _vendor_fakes import (
    PLAN,
    PLAN_JSON,
    SECRET,
    Canned,
    FakeServer,
    anthropic_body,
    anthropic_error,
    plan_request,
)

from swarmbus.agents.models import (
    AnthropicModel,
    OutputTruncatedError,
    OutputValidationError,
    ProviderRateLimitError,
    ProviderServerError,
    RefusalError,
    build_model,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def haiku(fake: FakeServer, **kwargs: object) -> AnthropicModel:
    return AnthropicModel("claude-haiku-4-5", base_url=fake.url, **kwargs)  # type: ignore[arg-type]


async def test_structured_output_native(fake: FakeServer, fake_keys: str) -> None:
    body = anthropic_body(PLAN_JSON, input_tokens=700, output_tokens=400, cache_read=300)
    fake.push(Canned(body))
    async with haiku(fake) as model:
        response = await model.complete(plan_request(temperature=0.5))
    assert response.output == PLAN
    p = response.provenance
    assert p.name == "anthropic:claude-haiku-4-5"
    # Anthropic's input_tokens excludes cache reads; ours includes them.
    assert (p.input_tokens, p.output_tokens, p.cached_tokens) == (1000, 400, 300)
    assert p.cost_usd == pytest.approx((700 * 1.0 + 300 * 0.1 + 400 * 5.0) / 1e6)
    seen = fake.requests[0]
    assert seen.path == "/v1/messages"
    assert SECRET in seen.headers.get("x-api-key", "") + seen.headers.get("authorization", "")
    body = seen.body
    assert body["system"] == "You plan." and body["max_tokens"] == 8192
    assert body["messages"] == [{"role": "user", "content": "make a plan"}]
    fmt = body["output_config"]["format"]
    assert fmt["type"] == "json_schema" and fmt["schema"]["additionalProperties"] is False
    assert "tools" not in body


async def test_forced_tool_for_older_models(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(anthropic_body(tool_input=PLAN.model_dump(), stop_reason="tool_use")))
    async with AnthropicModel("claude-3-5-haiku-latest", base_url=fake.url) as model:
        assert model.structured_output == "tool"
        response = await model.complete(plan_request())
    assert response.output == PLAN
    body = fake.requests[0].body
    assert body["tool_choice"] == {"type": "tool", "name": "final_answer"}
    assert body["tools"][0]["input_schema"]["required"] == ["title", "steps"]
    assert "output_config" not in body


async def test_repair_then_success(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(anthropic_body("Sure! {oops")), Canned(anthropic_body(PLAN_JSON)))
    async with haiku(fake) as model:
        response = await model.complete(plan_request())
    assert response.output == PLAN
    messages = fake.requests[1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "did not match" in messages[-1]["content"]


async def test_invalid_twice(fake: FakeServer, fake_keys: str) -> None:
    fake.default = Canned(anthropic_body('{"title": "x"}'))
    async with haiku(fake) as model:
        with pytest.raises(OutputValidationError, match="steps"):
            await model.complete(plan_request())
    assert len(fake.requests) == 2


async def test_refusal(fake: FakeServer, fake_keys: str) -> None:
    details = {"type": "refusal", "category": "cyber", "explanation": "policy"}
    fake.push(Canned(anthropic_body("", stop_reason="refusal", stop_details=details)))
    async with haiku(fake) as model:
        with pytest.raises(RefusalError, match="policy"):
            await model.complete(plan_request())


async def test_max_tokens(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(anthropic_body('{"title": "', stop_reason="max_tokens")))
    async with haiku(fake) as model:
        with pytest.raises(OutputTruncatedError):
            await model.complete(plan_request())


async def test_rate_limit_retried_then_typed(fake: FakeServer, fake_keys: str) -> None:
    fake.push(anthropic_error(429, "rate_limit_error"), Canned(anthropic_body(PLAN_JSON)))
    async with haiku(fake, max_retries=1) as model:
        assert (await model.complete(plan_request())).output == PLAN
        fake.default = anthropic_error(429, "rate_limit_error")
        with pytest.raises(ProviderRateLimitError):
            await model.complete(plan_request())
    assert len(fake.requests) == 4


async def test_overloaded_is_a_server_error(fake: FakeServer, fake_keys: str) -> None:
    fake.default = anthropic_error(529, "overloaded_error")
    async with haiku(fake, max_retries=0) as model:
        with pytest.raises(ProviderServerError) as caught:
            await model.complete(plan_request())
    assert caught.value.status_code == 529


async def test_base_url_from_environment(
    fake: FakeServer, fake_keys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    fake.push(Canned(anthropic_body(PLAN_JSON)))
    async with build_model("anthropic:claude-haiku-4-5") as model:
        assert (await model.complete(plan_request())).output == PLAN
        assert SECRET not in repr(model)


async def test_at_most_four_breakpoints_the_longest_prefixes_kept(
    fake: FakeServer, fake_keys: str
) -> None:
    from dataclasses import replace

    from swarmbus.agents.models import CACHE_BREAKPOINTS, ChatMessage, Part

    parts = [Part(text=f"section {i}\n", cache=i < 5) for i in range(6)]
    request = replace(plan_request(), cache_system=True,
                      messages=(ChatMessage.of("user", parts),))
    fake.push(Canned(anthropic_body(PLAN_JSON)))
    async with haiku(fake) as model:
        await model.complete(request)
    body = fake.requests[0].body
    assert body["system"] == [{"type": "text", "text": "You plan.",
                               "cache_control": {"type": "ephemeral"}}]
    (message,) = body["messages"]
    assert [b["text"] for b in message["content"]] == [p.text for p in parts]
    marked = [b["text"] for b in message["content"] if "cache_control" in b]
    assert marked == ["section 2\n", "section 3\n", "section 4\n"]
    assert 1 + len(marked) == CACHE_BREAKPOINTS


async def test_a_repair_keeps_the_first_messages_breakpoints(
    fake: FakeServer, fake_keys: str
) -> None:
    """The repair after an invalid answer sends the first message again: its prefix is
    read from the cache, not written twice."""
    from dataclasses import replace

    from swarmbus.agents.models import ChatMessage, Part

    request = replace(plan_request(), messages=(ChatMessage.of("user", [
        Part(text="the task\n", cache=True), Part(text="this round")]),))
    fake.push(Canned(anthropic_body("not json")), Canned(anthropic_body(PLAN_JSON)))
    async with haiku(fake) as model:
        await model.complete(request)
    first, repair = (r.body["messages"] for r in fake.requests)
    assert repair[0] == first[0]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert first[0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert isinstance(repair[2]["content"], str)  # the repair prompt: no breakpoint


@pytest.mark.parametrize(("prompt_cache", "rate"), [("1h", 2.0), ("5m", 1.25)])
async def test_writes_without_their_split_are_billed_at_the_lifetime_asked_for(
    fake: FakeServer, fake_keys: str, prompt_cache: str, rate: float
) -> None:
    body = anthropic_body(PLAN_JSON, input_tokens=100, output_tokens=10, cache_write_5m=1000)
    del body["usage"]["cache_creation"]  # an older API version or a proxy: no split
    fake.push(Canned(body))
    async with haiku(fake, prompt_cache=prompt_cache) as model:
        p = (await model.complete(plan_request())).provenance
    # haiku 4.5: 1.00 in, 1.25 5m write, 2.00 1h write, 5.00 out
    assert p.cost_usd == pytest.approx((100 * 1.0 + 1000 * rate + 10 * 5.0) / 1e6)


@pytest.mark.parametrize(("prompt_cache", "rate"), [("off", 1.0), ("5m", 1.25), ("1h", 2.0)])
async def test_a_budget_bounds_input_at_the_dearest_rate_the_model_can_be_billed(
    fake: FakeServer, fake_keys: str, prompt_cache: str, rate: float
) -> None:
    """With the cache off no write can be billed; with 5-minute entries no 1-hour write:
    the output a budget leaves is fitted to that, not to the dearest rate in the table."""
    import math

    from swarmbus.agents.models import Ledger, input_token_bound, metered

    request = plan_request()
    fake.push(Canned(anthropic_body(PLAN_JSON)))
    with metered(Ledger(scope="wf", budget_usd=0.01)):
        async with haiku(fake, prompt_cache=prompt_cache) as model:
            await model.complete(request)
    bound = input_token_bound(request, list(request.messages))
    expected = math.floor((0.01 - bound * rate / 1e6) * 1e6 / 5.0)  # haiku out: 5.00
    assert fake.requests[0].body["max_tokens"] == expected
