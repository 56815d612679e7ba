"""Gemini explicit context caching, through the real ``google-genai`` SDK against a
loopback fake that answers ``cachedContents`` creates and reports implicit cache hits
the way it is told."""

from __future__ import annotations

import math
import uuid
from typing import Any

import anyio
import pytest
from _vendor_fakes import (
    PLAN,
    PLAN_JSON,
    Canned,
    FakeServer,
    Plan,
    Seen,
    gemini_body,
    gemini_cache_body,
    gemini_error,
)

from swarmbus.agents.models import (
    CallBound,
    ChatMessage,
    GoogleModel,
    Ledger,
    LimitReached,
    ModelRequest,
    Part,
    Price,
    PriceTable,
    PromptCache,
    input_token_bound,
    metered,
    price_for,
    using_prices,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

STABLE = "The design, the same every round. " * 180  # 6,120 chars: ~1,530 tokens
CACHE_TOKENS = 1600  # what the fake says the cache holds (its totalTokenCount)
PROMPT_TOKENS = 1700  # what every generate request counts, cache included
OUT_TOKENS = 20


class Gemini:
    """A fake Gemini: answers creates (or fails them with ``create_error``), answers
    requests that refer to a cache with ``CACHE_TOKENS`` read from it (or ``gone`` with
    a 404), and reports an implicit hit of ``CACHE_TOKENS`` on repeats when
    ``implicit`` is set."""

    def __init__(self, *, implicit: bool, create_error: Canned | None = None,
                 lifetime_s: float = 300.0, gone: bool = False) -> None:
        self.implicit, self.create_error, self.lifetime_s = implicit, create_error, lifetime_s
        self.gone = gone
        self.creates: list[Seen] = []
        self.plain: list[Seen] = []
        self.cached: list[Seen] = []

    def __call__(self, seen: Seen) -> Canned | dict[str, Any]:
        if seen.cache_create:
            self.creates.append(seen)
            if self.create_error is not None:
                return self.create_error
            return gemini_cache_body(CACHE_TOKENS, name=f"cachedContents/c{len(self.creates)}",
                                     lifetime_s=self.lifetime_s)
        if seen.cached_content:
            self.cached.append(seen)
            if self.gone:
                return gemini_error(404, "NOT_FOUND", message="CachedContent not found")
            return gemini_body(PLAN_JSON, prompt_tokens=PROMPT_TOKENS, output_tokens=OUT_TOKENS,
                               cached_tokens=CACHE_TOKENS)
        hit = CACHE_TOKENS if self.implicit and self.plain else 0
        self.plain.append(seen)
        return gemini_body(PLAN_JSON, prompt_tokens=PROMPT_TOKENS, output_tokens=OUT_TOKENS,
                           cached_tokens=hit)


@pytest.fixture
def system() -> str:
    """A system prompt of this test only: the process's cache registry never mixes tests
    (a later fake may get an earlier one's port)."""
    return f"You plan. ({uuid.uuid4().hex})"


def ask(system: str, n: int, stable: str = STABLE) -> ModelRequest[Plan]:
    """Round ``n`` of a step: the stable part marked ``cache``, then what changes."""
    parts = [Part(text=stable, cache=True), Part(text=f"round {n}")]
    return ModelRequest(system=system, messages=(ChatMessage.of("user", parts),),
                        output_type=Plan, cache_system=True)


def gemini(fake: FakeServer, model: str = "gemini-2.5-flash", **kwargs: Any) -> GoogleModel:
    return GoogleModel(model, base_url=fake.url, **kwargs)


def storage_usd(tokens: int, ttl_s: int, model: str = "google:gemini-2.5-flash") -> float:
    price = price_for(model)
    assert price is not None and price.cache_storage_per_hour is not None
    return (tokens * price.input + tokens * price.cache_storage_per_hour * ttl_s / 3600) / 1e6


async def test_implicit_hits_never_create(fake: FakeServer, fake_keys: str,
                                          system: str) -> None:
    fake.responder = fake_gemini = Gemini(implicit=True)
    async with gemini(fake) as model:
        for n in range(6):
            assert (await model.complete(ask(system, n))).output == PLAN
    assert fake_gemini.creates == [] and fake_gemini.cached == []
    assert len(fake_gemini.plain) == 6
    assert all(s.body["systemInstruction"]["parts"][0]["text"] == system
               for s in fake_gemini.plain)


@pytest.mark.parametrize(("prompt_cache", "ttl"), [("5m", "300s"), ("1h", "3600s")])
async def test_implicit_miss_creates_then_reuses(fake: FakeServer, fake_keys: str, system: str,
                                                 prompt_cache: PromptCache, ttl: str) -> None:
    fake.responder = fake_gemini = Gemini(implicit=False)
    async with gemini(fake, prompt_cache=prompt_cache) as model:
        for n in range(2):  # a first sighting, then a repeat that misses
            await model.complete(ask(system, n))
        assert fake_gemini.creates == []
        third = await model.complete(ask(system, 2))
        fourth = await model.complete(ask(system, 3))
    assert third.output == fourth.output == PLAN
    assert [s.cache_create for s in fake.requests] == [False, False, True, False, False]
    (create,) = fake_gemini.creates
    assert create.body == {
        "model": "models/gemini-2.5-flash", "ttl": ttl,
        "systemInstruction": {"role": "user", "parts": [{"text": system}]},
        "contents": [{"role": "user", "parts": [{"text": STABLE}]}],
    }
    for n, seen in enumerate(fake_gemini.cached, start=2):
        assert seen.body["cachedContent"] == "cachedContents/c1"
        assert seen.body["contents"] == [{"role": "user", "parts": [{"text": f"round {n}"}]}]
        assert "systemInstruction" not in seen.body
        assert seen.body["generationConfig"]["responseMimeType"] == "application/json"
    # the create is in the third answer's provenance: two calls, its tokens written
    p = third.provenance
    assert (p.calls, p.cache_write_tokens, p.cached_tokens) == (2, CACHE_TOKENS, CACHE_TOKENS)
    assert fourth.provenance.calls == 1


async def test_the_create_is_booked_at_its_exact_cost(fake: FakeServer, fake_keys: str,
                                                      system: str) -> None:
    fake.responder = Gemini(implicit=False)
    price = price_for("google:gemini-2.5-flash")
    assert price is not None and price.cached_input is not None
    assert price.cache_storage_per_hour == 1.0
    ledger = Ledger()
    async with gemini(fake) as model:
        with metered(ledger):
            for n in range(4):
                await model.complete(ask(system, n))
    create = ledger.records[2]
    assert (create.input_tokens, create.output_tokens, create.cache_write_tokens) == (
        CACHE_TOKENS, 0, CACHE_TOKENS)
    expected = CACHE_TOKENS * (0.30 + 1.00 * 300 / 3600) / 1e6
    assert create.cost_usd == pytest.approx(expected, rel=1e-12)
    assert create.cost_usd == pytest.approx(storage_usd(CACHE_TOKENS, 300), rel=1e-12)
    plain = (PROMPT_TOKENS * 0.30 + OUT_TOKENS * 2.50) / 1e6
    cached = ((PROMPT_TOKENS - CACHE_TOKENS) * 0.30 + CACHE_TOKENS * price.cached_input
              + OUT_TOKENS * 2.50) / 1e6
    assert [r.cost_usd for r in ledger.records] == pytest.approx(
        [plain, plain, expected, cached, cached], rel=1e-12)
    assert ledger.usage.calls == 5 and ledger.usage.unpriced_calls == 0
    assert ledger.usage.cache_write_tokens == CACHE_TOKENS
    assert ledger.usage.priced_cost_usd == pytest.approx(2 * plain + expected + 2 * cached)


async def test_a_budget_that_cannot_afford_the_create_sends_the_request_without_it(
        fake: FakeServer, fake_keys: str, system: str) -> None:
    fake.responder = fake_gemini = Gemini(implicit=False)
    async with gemini(fake) as model:
        for n in range(2):
            await model.complete(ask(system, n))
        request = ask(system, 2)
        price = price_for("google:gemini-2.5-flash")
        worst = CallBound(price, input_token_bound(request), request.settings.max_tokens)
        worst_usd = worst.worst_usd()
        assert worst_usd is not None
        tight = Ledger(budget_usd=worst_usd * 1.01)  # the request fits, the create does not
        with metered(tight):
            assert (await model.complete(request)).output == PLAN
        assert fake_gemini.creates == [] and len(tight.records) == 1
        assert "systemInstruction" in fake.requests[-1].body  # sent as before
        roomy = Ledger(budget_usd=1.0)  # skipped is not failed: the next one creates
        with metered(roomy):
            await model.complete(ask(system, 3))
    assert len(fake_gemini.creates) == 1 and len(fake_gemini.cached) == 1
    assert [r.calls for r in roomy.records] == [1, 1]
    assert roomy.usage.priced_cost_usd <= 1.0


def test_a_call_without_output_is_bounded_too() -> None:
    bound = CallBound(Price(input=1.0, output=0.0), input_tokens=10_000, max_tokens=0)
    with pytest.raises(LimitReached, match="not made"):
        Ledger(budget_usd=0.005).before_call("google:gemini-2.5-flash", bound)  # costs 0.01
    assert Ledger(budget_usd=0.02).before_call("google:gemini-2.5-flash", bound) is None


async def test_a_failed_create_is_not_tried_again(fake: FakeServer, fake_keys: str,
                                                  system: str) -> None:
    refused = gemini_error(400, "INVALID_ARGUMENT", message="Cached content is too small. "
                           "total_token_count=1006, min_total_token_count=1024")
    fake.responder = fake_gemini = Gemini(implicit=False, create_error=refused)
    ledger = Ledger()
    async with gemini(fake) as model:
        with metered(ledger):
            for n in range(6):
                assert (await model.complete(ask(system, n))).output == PLAN
    assert len(fake_gemini.creates) == 1 and fake_gemini.cached == []
    assert len(fake_gemini.plain) == 6 and len(ledger.records) == 6  # the 400 cost nothing


async def test_prompt_cache_off_never_creates(fake: FakeServer, fake_keys: str,
                                              system: str) -> None:
    fake.responder = fake_gemini = Gemini(implicit=False)
    async with gemini(fake, prompt_cache="off") as model:
        for n in range(5):
            await model.complete(ask(system, n))
    assert fake_gemini.creates == [] and len(fake_gemini.plain) == 5


@pytest.mark.parametrize(("model_name", "stable"), [
    ("gemini-2.5-flash", "Short and stable. " * 150),  # 2,700 chars: ~675 < 1,024 tokens
    ("gemini-2.5-pro", STABLE),  # ~1,530 tokens < 4,096
    ("gemini-2.0-flash", STABLE),  # no known minimum, no storage price
])
async def test_a_prefix_below_the_minimum_never_creates(
        fake: FakeServer, fake_keys: str, system: str, model_name: str, stable: str) -> None:
    fake.responder = fake_gemini = Gemini(implicit=False)
    async with gemini(fake, model_name) as model:
        for n in range(5):
            await model.complete(ask(system, n, stable))
    assert fake_gemini.creates == [] and len(fake_gemini.plain) == 5


async def test_no_storage_price_no_explicit_cache(fake: FakeServer, fake_keys: str,
                                                  system: str) -> None:
    fake.responder = fake_gemini = Gemini(implicit=False)
    no_storage = Price(input=0.30, output=2.50, cached_input=0.03)
    assert no_storage.cache_create_cost(1000, 300) is None  # unknown, never $0
    async with gemini(fake, price=no_storage) as model:
        for n in range(4):
            await model.complete(ask(system, n))
    with using_prices(PriceTable()):  # unpriced: its cost would be unknown
        async with gemini(fake) as model:
            for n in range(4):
                response = await model.complete(ask(system + " unpriced", n))
                assert response.provenance.cost_usd is None
    assert fake_gemini.creates == [] and len(fake_gemini.plain) == 8


async def test_only_a_cache_that_paid_is_made_again(fake: FakeServer, fake_keys: str,
                                                    system: str) -> None:
    # The fake's caches live 2 s (1.8 s usable). On 2.5 Flash a 5-minute cache pays from
    # its second request: (0.30 + 1.00 / 12) / (0.30 - 0.03) = 1.42.
    price = price_for("google:gemini-2.5-flash")
    assert price is not None and price.cached_input is not None
    assert price.cache_storage_per_hour is not None
    needed = math.floor((price.input + price.cache_storage_per_hour / 12)
                        / (price.input - price.cached_input)) + 1
    assert needed == 2
    fake.responder = fake_gemini = Gemini(implicit=False, lifetime_s=2.0)
    async with gemini(fake) as model:
        paid, unpaid = system + " paid", system + " unpaid"
        for n in range(4):  # two plain, then the create and one more use: it paid
            await model.complete(ask(paid, n))
        for n in range(3):  # two plain, then the create: one use
            await model.complete(ask(unpaid, n))
        assert len(fake_gemini.creates) == 2
        await anyio.sleep(2.0)
        await model.complete(ask(paid, 4))  # renewed
        await model.complete(ask(unpaid, 3))  # not made again
        await model.complete(ask(unpaid, 4))
    assert [s.prompt_text().split("\n")[0] for s in fake_gemini.creates] == [paid, unpaid, paid]
    assert fake.requests[-1].body.get("cachedContent") is None


async def test_a_cache_that_is_gone_is_dropped_and_the_request_answered(
        fake: FakeServer, fake_keys: str, system: str) -> None:
    fake.responder = fake_gemini = Gemini(implicit=False, gone=True)
    async with gemini(fake) as model:
        for n in range(5):
            assert (await model.complete(ask(system, n))).output == PLAN
    assert len(fake_gemini.creates) == 1 and len(fake_gemini.cached) == 1
    assert [s.cached_content for s in fake.requests] == [
        None, None, None, "cachedContents/c1", None, None, None]
