"""Every billed call is in the ledger, whatever happened next; unknown usage is never $0;
prices match the bill; the cache serves one workflow. Through the real SDKs and fakes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
from _vendor_fakes import (
    PLAN,
    PLAN_JSON,
    Canned,
    FakeServer,
    Plan,
    anthropic_body,
    gemini_body,
    openai_body,
    plan_request,
)

from swarmbus.agents.models import (
    CHARS_PER_TOKEN,
    AnthropicModel,
    Billed,
    CachedModel,
    FallbackExhaustedError,
    FallbackModel,
    FallbackSpec,
    GoogleModel,
    Ledger,
    MemoryStore,
    ModelSpec,
    OpenAIModel,
    OutputTruncatedError,
    OutputValidationError,
    PriceTable,
    ProviderEmptyReplyError,
    ProviderServerError,
    RefusalError,
    ScriptedModel,
    build_model,
    metered,
)
from swarmbus.protocols import Usage

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20), pytest.mark.usefixtures("fresh_prices")]

MILLION, MAX_OUT = 1_000_000, 8192
GPT4O_CALL = (MILLION * 2.5 + MAX_OUT * 10.0) / 1e6  # $2.58192: 1M in, 8,192 out


class BudgetExceeded(Exception):
    """What a runtime's ledger check raises; the model layer must let it through."""


def budget(limit_usd: float) -> Ledger:
    def check(ledger: Ledger, model: str) -> None:
        if ledger.spent_usd >= limit_usd:
            raise BudgetExceeded(f"spent ${ledger.spent_usd:.2f} before calling {model}")

    return Ledger(scope="wf-1", check=check)


def big(content: str | None, **kwargs: object) -> Canned:
    return Canned(openai_body(content, prompt_tokens=MILLION, completion_tokens=MAX_OUT,
                              **kwargs))  # type: ignore[arg-type]


def gpt4o(fake: FakeServer) -> OpenAIModel:
    return OpenAIModel("gpt-4o", base_url=fake.url + "/v1", max_retries=0)


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    with metered(Ledger(scope="wf-1")) as current:
        yield current


# -- 1. every billed call is in the spend -------------------------------------------------


async def test_invalid_output_twice_is_two_billed_calls(
    fake: FakeServer, fake_keys: str, ledger: Ledger
) -> None:
    fake.push(big("not json"), big("still not json"))
    async with gpt4o(fake) as model:
        with pytest.raises(OutputValidationError) as caught:
            await model.complete(plan_request())
    spent = ledger.usage
    assert spent.calls == 2 and spent.cost_usd == pytest.approx(2 * GPT4O_CALL)  # ~$5.16
    assert (spent.input_tokens, spent.output_tokens) == (2 * MILLION, 2 * MAX_OUT)
    assert caught.value.usage == spent and caught.value.permanent
    assert [p.name for p in ledger.records] == ["openai:gpt-4o"] * 2


async def test_truncated_answer_is_billed(
    fake: FakeServer, fake_keys: str, ledger: Ledger
) -> None:
    fake.push(big('{"title": "x", "st', finish_reason="length"))
    async with gpt4o(fake) as model:
        with pytest.raises(OutputTruncatedError) as caught:
            await model.complete(plan_request())
    assert ledger.usage.calls == 1 and ledger.usage.cost_usd == pytest.approx(GPT4O_CALL)
    assert caught.value.usage == ledger.usage


async def test_refusal_is_billed(fake: FakeServer, fake_keys: str, ledger: Ledger) -> None:
    fake.push(big(None, refusal="no"))
    async with gpt4o(fake) as model:
        with pytest.raises(RefusalError) as caught:
            await model.complete(plan_request())
    assert caught.value.usage.cost_usd == pytest.approx(GPT4O_CALL)
    assert ledger.usage == caught.value.usage


async def test_success_after_repair_books_both_calls(
    fake: FakeServer, fake_keys: str, ledger: Ledger
) -> None:
    fake.push(big("nope"), Canned(openai_body(PLAN_JSON, prompt_tokens=10, completion_tokens=5)))
    async with gpt4o(fake) as model:
        response = await model.complete(plan_request())
    assert response.provenance.calls == 2 and ledger.usage.calls == 2
    assert response.usage.cost_usd == pytest.approx(ledger.usage.cost_usd)
    assert ledger.usage.cost_usd == pytest.approx(GPT4O_CALL + (10 * 2.5 + 5 * 10.0) / 1e6)


def output_chain(fake: FakeServer, fake2: FakeServer) -> FallbackModel:
    chain = build_model(FallbackSpec(
        fallback=[ModelSpec(name="openai:gpt-4o", base_url=fake.url + "/v1", max_retries=0),
                  ModelSpec(name="anthropic:claude-haiku-4-5", base_url=fake2.url)],
        on=["provider", "output"],
    ))
    assert isinstance(chain, FallbackModel)
    return chain


async def test_chain_moves_on_after_output_errors_and_books_what_it_left(
    fake: FakeServer, fake2: FakeServer, fake_keys: str, ledger: Ledger
) -> None:
    fake.push(big("not json"), big("not json"))
    fake2.push(Canned(anthropic_body(PLAN_JSON, input_tokens=100, output_tokens=20)))
    async with output_chain(fake, fake2) as chain:
        response = await chain.complete(plan_request())
    assert response.output == PLAN and response.provenance.tried == ["openai:gpt-4o"]
    haiku = (100 * 1.0 + 20 * 5.0) / 1e6
    assert ledger.usage.calls == 3
    assert ledger.usage.cost_usd == pytest.approx(2 * GPT4O_CALL + haiku)
    assert response.usage.cost_usd == pytest.approx(haiku)  # the answer's own; the ledger has all


async def test_budget_check_stops_the_chain_before_the_repair_call(
    fake: FakeServer, fake2: FakeServer, fake_keys: str
) -> None:
    fake.push(big("not json"), big("not json"))
    fake2.default = Canned(anthropic_body(PLAN_JSON))
    with metered(budget(1.0)) as ledger:
        async with output_chain(fake, fake2) as chain:
            with pytest.raises(BudgetExceeded) as caught:
                await chain.complete(plan_request())
    assert caught.value is ledger.stopped  # unchanged, not wrapped, no fallback
    assert len(fake.requests) == 1 and fake2.requests == []
    assert ledger.usage.calls == 1 and ledger.usage.cost_usd == pytest.approx(GPT4O_CALL)


async def test_check_raising_on_the_next_models_call_stops_before_its_request(
    fake: FakeServer, fake2: FakeServer, fake_keys: str
) -> None:
    seen: list[str] = []

    def stop_at_the_next_model(ledger: Ledger, model: str) -> None:
        seen.append(model)
        if model != "openai:gpt-4o":
            raise BudgetExceeded(f"${ledger.total.cost_usd:.2f} spent")

    fake.push(big("not json"), big("not json"))
    fake2.default = Canned(anthropic_body(PLAN_JSON))
    with metered(Ledger(scope="wf-1", check=stop_at_the_next_model)) as ledger:
        async with output_chain(fake, fake2) as chain:
            with pytest.raises(BudgetExceeded, match=r"\$5\.16"):
                await chain.complete(plan_request())
    assert seen == ["openai:gpt-4o", "openai:gpt-4o", "anthropic:claude-haiku-4-5"]
    assert fake2.requests == []  # the next model's HTTP request was never made
    assert ledger.usage.calls == 2 and ledger.usage.cost_usd == pytest.approx(2 * GPT4O_CALL)


async def test_a_check_raising_a_model_error_still_stops_the_chain(
    fake: FakeServer, fake2: FakeServer, fake_keys: str
) -> None:
    stop = ProviderServerError("stopped by the runtime")

    def check(ledger: Ledger, model: str) -> None:
        if ledger.usage.calls:
            raise stop

    fake.push(big("not json"), big("not json"))
    fake2.default = Canned(anthropic_body(PLAN_JSON))
    with metered(Ledger(check=check)):
        async with output_chain(fake, fake2) as chain:
            with pytest.raises(ProviderServerError) as caught:
                await chain.complete(plan_request())
    assert caught.value is stop and fake2.requests == []


async def test_exhausted_chain_carries_the_sum(
    fake: FakeServer, fake2: FakeServer, fake_keys: str, ledger: Ledger
) -> None:
    fake.push(big("not json"), big("not json"))
    fake2.default = Canned(anthropic_body("nope", input_tokens=1000, output_tokens=100))
    async with output_chain(fake, fake2) as chain:
        with pytest.raises(FallbackExhaustedError) as caught:
            await chain.complete(plan_request())
    err = caught.value
    assert err.usage == ledger.usage and err.usage.calls == 4
    assert err.usage.cost_usd == pytest.approx(2 * GPT4O_CALL + 2 * (1000 + 500) / 1e6)
    assert err.permanent  # every member failed for good


# -- 2. unknown usage is never $0 ----------------------------------------------------------


def estimate(prompt: str, reply: str) -> tuple[int, int]:
    schema = json.dumps(Plan.model_json_schema())
    sent = len("You plan.") + len(prompt) + len(schema)
    return math.ceil(sent / CHARS_PER_TOKEN), math.ceil(len(reply) / CHARS_PER_TOKEN)


async def test_openai_reply_without_usage_is_estimated(
    fake: FakeServer, fake_keys: str, ledger: Ledger
) -> None:
    fake.push(Canned(openai_body(PLAN_JSON, usage=False)))
    async with gpt4o(fake) as model:
        response = await model.complete(plan_request())
    p = response.provenance
    assert (p.input_tokens, p.output_tokens) == estimate("make a plan", PLAN_JSON)
    assert p.estimated_calls == 1 and p.estimated
    assert p.cost_usd == pytest.approx((p.input_tokens * 2.5 + p.output_tokens * 10.0) / 1e6)
    assert p.cost_usd is not None and p.cost_usd > 0
    assert ledger.usage.estimated_calls == 1 and ledger.total.cost_usd == p.cost_usd


async def test_gemini_reply_without_usage_metadata_is_estimated(
    fake: FakeServer, fake_keys: str, ledger: Ledger
) -> None:
    fake.push(Canned(gemini_body(PLAN_JSON, usage=False)))
    async with GoogleModel("gemini-2.5-pro", base_url=fake.url) as model:
        response = await model.complete(plan_request())
    p = response.provenance
    assert (p.input_tokens, p.output_tokens) == estimate("make a plan", PLAN_JSON)
    assert p.estimated_calls == 1 and p.cost_usd is not None and p.cost_usd > 0
    assert ledger.usage.cost_usd == p.cost_usd


async def test_a_budget_counts_the_estimate(fake: FakeServer, fake_keys: str) -> None:
    fake.default = Canned(openai_body("x" * 400_000, usage=False))  # ~100k tokens out: $1
    with metered(budget(0.5)) as ledger:
        async with gpt4o(fake) as model:
            with pytest.raises(BudgetExceeded):
                await model.complete(plan_request())
    assert len(fake.requests) == 1 and ledger.usage.estimated_calls == 1
    assert ledger.usage.priced_cost_usd >= 1.0


# -- 3. prices that match the bill ---------------------------------------------------------


async def test_anthropic_cache_writes_and_reads_at_their_rates(
    fake: FakeServer, fake_keys: str
) -> None:
    fake.push(Canned(anthropic_body(PLAN_JSON, input_tokens=1000, output_tokens=100,
                                    cache_read=2000, cache_write_5m=4000, cache_write_1h=8000)))
    async with AnthropicModel("claude-haiku-4-5", base_url=fake.url) as model:
        p = (await model.complete(plan_request())).provenance
    assert (p.input_tokens, p.cached_tokens, p.cache_write_tokens) == (15000, 2000, 12000)
    # haiku 4.5: 1.00 in, 0.10 cache hit, 1.25 5m write, 2.00 1h write, 5.00 out
    expected = (1000 * 1.0 + 2000 * 0.1 + 4000 * 1.25 + 8000 * 2.0 + 100 * 5.0) / 1e6
    assert p.cost_usd == pytest.approx(expected)
    plain = (15000 * 1.0 + 100 * 5.0) / 1e6  # the same tokens as plain input
    assert p.cost_usd is not None and p.cost_usd > plain


async def test_openai_reasoning_is_output_and_cached_input_discounted(
    fake: FakeServer, fake_keys: str
) -> None:
    fake.push(Canned(openai_body(PLAN_JSON, prompt_tokens=1000, cached_tokens=600,
                                 completion_tokens=500, reasoning_tokens=300)))
    async with gpt4o(fake) as model:
        p = (await model.complete(plan_request())).provenance
    assert (p.output_tokens, p.reasoning_tokens) == (500, 300)  # already included
    assert p.cost_usd == pytest.approx((400 * 2.5 + 600 * 1.25 + 500 * 10.0) / 1e6)


async def test_gemini_thoughts_are_added_to_output(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(gemini_body(PLAN_JSON, prompt_tokens=1000, output_tokens=100,
                                 thoughts_tokens=900, cached_tokens=0)))
    async with GoogleModel("gemini-2.5-flash", base_url=fake.url) as model:
        p = (await model.complete(plan_request())).provenance
    assert (p.output_tokens, p.reasoning_tokens) == (1000, 900)
    assert p.cost_usd == pytest.approx((1000 * 0.3 + 1000 * 2.5) / 1e6)


def test_every_shipped_price_is_dated_and_sourced() -> None:
    table = PriceTable.shipped(environ=False)
    for name in table.names():
        price = table.get(name)
        assert price is not None and price.as_of and price.source, name
        assert (price.cached_input or 0) <= price.input, name
        if name.startswith("anthropic:"):  # cache writes cost more than plain input
            assert price.cache_write == pytest.approx(1.25 * price.input), name
            assert price.cache_write_1h == pytest.approx(2 * price.input), name


# -- 4. a resubmitted task gets fresh answers ----------------------------------------------


async def test_cache_is_scoped_to_the_workflow_unless_shared() -> None:
    store = MemoryStore()
    second = Plan(title="fresh", steps=[])
    model = CachedModel(ScriptedModel([PLAN, second, PLAN]), store)
    with metered(Ledger(scope="wf-1")) as first_run:
        assert (await model.complete(plan_request())).output == PLAN
        hit = await model.complete(plan_request())  # a redelivery in the same workflow
    assert hit.provenance.from_cache and hit.usage.cache_hits == 1
    assert first_run.usage.cache_hits == 1 and first_run.usage.calls == 1
    with metered(Ledger(scope="wf-2")) as resubmitted:
        fresh = await model.complete(plan_request())
    assert fresh.output == second and not fresh.provenance.from_cache
    assert resubmitted.usage.calls == 1 and resubmitted.usage.cache_hits == 0

    shared = CachedModel(ScriptedModel([PLAN]), MemoryStore(), shared=True)
    with metered(Ledger(scope="wf-1")):
        await shared.complete(plan_request())
    with metered(Ledger(scope="wf-2")) as other:
        assert (await shared.complete(plan_request())).provenance.from_cache
    assert other.usage.cache_hits == 1 and other.usage.calls == 0


# -- 18. each deliberate bug fails a test ---------------------------------------------------


async def test_fresh_hit_is_free_and_only_a_redelivered_hit_carries_the_original_cost() -> None:
    store = MemoryStore()
    paid = Billed(PLAN, input_tokens=MILLION, output_tokens=MAX_OUT)
    model = CachedModel(ScriptedModel([paid], name="openai:gpt-4o"), store)
    with metered(Ledger(scope="wf-1")) as first:
        await model.complete(plan_request())
    assert first.usage.cost_usd == pytest.approx(GPT4O_CALL)

    with metered(Ledger(scope="wf-1")) as fresh:
        hit = await model.complete(plan_request())
    assert hit.provenance.cost_usd == 0.0 and hit.provenance.calls == 0
    assert fresh.usage.cost_usd == 0.0 and fresh.usage.cache_hits == 1
    assert hit.provenance.original_usage is not None
    assert hit.provenance.original_usage.cost_usd == pytest.approx(GPT4O_CALL)

    with metered(Ledger(scope="wf-1", redelivery=True)) as redelivered:
        await model.complete(plan_request())
    assert redelivered.usage.cost_usd == pytest.approx(GPT4O_CALL)
    assert redelivered.usage.calls == 1 and redelivered.usage.cache_hits == 1


async def test_original_cost_of_a_cached_answer_includes_the_chains_failures() -> None:
    failing = ScriptedModel([Billed(ProviderServerError("down"), input_tokens=MILLION)],
                            name="openai:gpt-4o")
    backup = ScriptedModel([PLAN], name="local:backup")
    model = CachedModel(FallbackModel([failing, backup]), MemoryStore())
    with metered(Ledger(scope="wf-1")) as first:
        await model.complete(plan_request())
    with metered(Ledger(scope="wf-1", redelivery=True)) as again:
        hit = await model.complete(plan_request())
    assert hit.provenance.from_cache
    assert first.usage.cost_usd == pytest.approx(2.5)
    assert again.usage.cost_usd == pytest.approx(2.5) and again.usage.calls == 2


async def test_unpriced_calls_are_summed_into_totals() -> None:
    local = ScriptedModel([PLAN, PLAN], name="local:llama", price="unpriced")
    with metered(Ledger(spent_before=Usage(unpriced_calls=1, calls=1))) as ledger:
        await local.complete(plan_request())
        await local.complete(plan_request())
    assert ledger.usage.unpriced_calls == 2 and ledger.usage.priced_cost_usd == 0.0
    assert ledger.usage.cost_usd is None, "an unknown cost is never a number"
    assert ledger.total.unpriced_calls == 3 and ledger.total.calls == 3
    assert ledger.total.cost_usd is None and ledger.spent_usd == 0.0


async def test_a_success_between_two_failures_does_not_cool_a_model_down() -> None:
    flaky = ScriptedModel([ProviderServerError("down"), PLAN, ProviderServerError("down")],
                          name="a:flaky")
    backup = ScriptedModel([PLAN] * 3, name="b:backup")
    chain = FallbackModel([flaky, backup], failures_before_cooldown=2, cooldown_s=60)
    for _ in range(3):
        await chain.complete(plan_request())
    assert chain.cooling_down() == []
    assert len(backup.requests) == 2  # after each failure, not after the success


async def test_empty_reply_with_usage_is_booked_and_moves_down_the_chain(
    fake: FakeServer, fake_keys: str, ledger: Ledger
) -> None:
    fake.push(big(None, choices=False))
    backup = ScriptedModel([PLAN], name="local:backup")
    chain = FallbackModel([gpt4o(fake), backup])
    async with chain:
        response = await chain.complete(plan_request())
    assert response.provenance.tried == ["openai:gpt-4o"]
    assert ledger.usage.cost_usd == pytest.approx(GPT4O_CALL)
    assert ProviderEmptyReplyError.permanent is False


async def test_gemini_cached_content_is_input_at_the_cached_rate(
    fake: FakeServer, fake_keys: str
) -> None:
    fake.push(Canned(gemini_body(PLAN_JSON, prompt_tokens=5000, output_tokens=200,
                                 cached_tokens=3000)))
    async with GoogleModel("gemini-2.5-pro", base_url=fake.url) as model:
        p = (await model.complete(plan_request())).provenance
    # promptTokenCount includes the cached content: 2,000 at 1.25, 3,000 at 0.125
    assert (p.input_tokens, p.cached_tokens, p.cache_write_tokens) == (5000, 3000, 0)
    assert p.cost_usd == pytest.approx((2000 * 1.25 + 3000 * 0.125 + 200 * 10.0) / 1e6)
