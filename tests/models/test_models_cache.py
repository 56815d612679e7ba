"""The response cache: in memory, and in a JetStream key-value bucket on a real nats-server."""

from __future__ import annotations

import json

import pytest
from _vendor_fakes import PLAN, PLAN_JSON, Canned, FakeServer, openai_body, plan_request

from swarmbus.agents.models import (
    CachedModel,
    MemoryStore,
    OpenAIModel,
    ResponseStore,
    ScriptedModel,
    build_model,
)
from swarmbus.bus import Bus

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


async def test_hit_skips_the_provider(fake: FakeServer, fake_keys: str) -> None:
    reply = Canned(openai_body(PLAN_JSON, prompt_tokens=1000, completion_tokens=100))
    fake.push(reply, reply)
    store = MemoryStore()
    inner = OpenAIModel("gpt-4o", base_url=fake.url + "/v1")
    async with CachedModel(inner, store) as model:
        first = await model.complete(plan_request())
        second = await model.complete(plan_request())
        other = await model.complete(plan_request("another prompt"))  # a miss
    assert len(fake.requests) == 2
    assert first.provenance.cost_usd and first.provenance.cost_usd > 0
    assert not first.provenance.from_cache
    p = second.provenance
    assert second.output == PLAN and p.from_cache
    assert (p.cost_usd, p.input_tokens, p.output_tokens) == (0.0, 0, 0)
    assert p.name == "openai:gpt-4o" and p.request_hash == first.provenance.request_hash
    assert second.usage.unpriced_calls == 0 and second.usage.cost_usd == 0.0
    assert not other.provenance.from_cache
    assert model.hits == 1 and model.misses == 2
    assert plan_request().request_hash("openai:gpt-4o") in store.data


async def test_ttl_and_unreadable_entries() -> None:
    store = MemoryStore()
    model = CachedModel(ScriptedModel([PLAN, PLAN, PLAN]), store, ttl_s=60)
    await model.complete(plan_request())
    key = plan_request().request_hash(model.name)
    entry = json.loads(store.data[key])
    entry["stored_at"] -= 61
    store.data[key] = json.dumps(entry).encode()
    assert not (await model.complete(plan_request())).provenance.from_cache  # expired
    store.data[key] = b"garbage"
    assert not (await model.complete(plan_request())).provenance.from_cache
    assert model.misses == 3


class BrokenStore:
    async def get(self, key: str) -> bytes | None:
        raise OSError("store down")

    async def put(self, key: str, value: bytes) -> None:
        raise OSError("store down")


async def test_a_failing_store_never_fails_the_call() -> None:
    assert isinstance(BrokenStore(), ResponseStore)
    model = CachedModel(ScriptedModel([PLAN]), BrokenStore())
    assert (await model.complete(plan_request())).output == PLAN


async def test_in_a_jetstream_bucket(nats_url: str, namespace: str) -> None:
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        store = await bus.key_value("modelcache", ttl_s=3600)
        scripted = ScriptedModel([PLAN], name="demo:coder")
        model = CachedModel(scripted, store)
        first = await model.complete(plan_request())
        # a second process (a redelivery on another replica) shares the bucket
        again = CachedModel(ScriptedModel([], name="demo:coder"), store)
        second = await again.complete(plan_request())
    assert not first.provenance.from_cache
    assert second.provenance.from_cache and second.output == PLAN
    assert scripted.remaining == 0


def test_build_model_wraps_in_cache(fake_keys: str) -> None:
    model = build_model("openai:gpt-4o", cache=MemoryStore(), cache_ttl_s=10)
    assert isinstance(model, CachedModel) and model.ttl_s == 10 and model.name == "openai:gpt-4o"


async def test_no_configured_secret_is_stored_in_the_cache() -> None:
    """A model that echoes a key in its answer: the cache entry (stored in the
    namespace's bucket, on disk) holds the mask, as every message does."""
    from swarmbus.agents.models import FunctionModel, MemoryStore, ModelRequest
    from swarmbus.bus import MASK, register_secret
    from swarmbus.protocols import Text

    secret = "sk-cache-test-0123456789abcdefghij"
    register_secret(secret, source="TEST_CACHE_KEY")

    def echo(request: ModelRequest[Text]) -> Text:
        return Text(text=f"the key is {secret}")

    store = MemoryStore()
    model = CachedModel(FunctionModel(echo, name="t:echo"), store)
    request = ModelRequest(system="s", messages=(), output_type=Text)
    await model.complete(request)
    (raw,) = store.data.values()
    assert secret.encode() not in raw and MASK.encode() in raw


def test_the_request_hash_ignores_what_does_not_change_the_answer() -> None:
    """The response cache's key: the timeout and the prompt-cache hints (sections,
    breakpoints, the cache key) leave it alone; the text, the output limit and the
    temperature change it."""
    from dataclasses import replace

    from swarmbus.agents.models import ChatMessage, Part

    base = plan_request("make a plan")
    key = base.request_hash("openai:gpt-4o")
    same = [
        plan_request("make a plan", timeout_s=7),
        replace(base, cache_key="swarmbus-abc", cache_system=True),
        replace(base, messages=(ChatMessage.of("user", [Part(text="make a ", cache=True),
                                                        Part(text="plan")]),)),
    ]
    assert all(r.request_hash("openai:gpt-4o") == key for r in same)
    other = [plan_request("make a plan!"), plan_request("make a plan", max_tokens=100),
             plan_request("make a plan", temperature=0.5)]
    assert all(r.request_hash("openai:gpt-4o") != key for r in other)
    assert base.request_hash("anthropic:claude-haiku-4-5") != key
    with pytest.raises(ValueError, match="parts must join"):
        ChatMessage(role="user", content="x", parts=(Part(text="y"),))
