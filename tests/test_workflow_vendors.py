"""Workflows across the three vendors' real SDKs (openai, anthropic, google-genai), pointed
at one loopback fake speaking each wire format, on a real nats-server: the four-role
example with its auditor sending the code back, every call booked at the vendors'
prices; and the seed example reaching the fake through the SDKs' own base-URL
variables, as the README says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _team_helpers import path, works
from _vendor_fakes import SECRET, Canned, FakeServer, Seen, anthropic_body, gemini_body, openai_body

from swarmbus.agents import Swarm
from swarmbus.agents.models import (
    Model,
    ModelConfig,
    ModelSpec,
    block_real_models,
    build_model,
    price_for,
)
from swarmbus.agents.workflow import load_workflow, team
from swarmbus.bus import SwarmClient
from swarmbus.protocols import (
    Code,
    Component,
    Design,
    Finding,
    SourceFile,
    TaskRequest,
    TaskResult,
    Verdict,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "workflows"
GOAL = "Write charge(amount) for a PaymentGateway, with tests"
UNSAFE = "def charge(amount):\n    return eval(str(amount))\n"
SAFE = "def charge(amount):\n    if amount <= 0:\n        raise ValueError(amount)\n" \
       "    return amount\n"
TEST = "from gateway import charge\n\n\ndef test_charge():\n    assert charge(5) == 5\n"
TOKENS = {"openai": (120, 30), "anthropic": (200, 40), "google": (150, 25)}  # in, out


def answer(seen: Seen) -> Canned | dict[str, Any]:
    """A team behind three vendors: Gemini designs, GPT codes (safely once told),
    Claude audits (the code with eval goes back) and reviews."""
    text = seen.prompt_text()
    if seen.vendor == "google":
        reply = Design(summary="PaymentGateway.charge validates and returns the amount",
                       components=[Component(name="charge", responsibility="charges")],
                       interfaces=["charge(amount: int) -> int"],
                       files=["gateway.py", "test_gateway.py"]).model_dump_json()
    elif seen.vendor == "openai":
        fixed = "## Findings to address" in text
        reply = Code(files=[SourceFile(path="gateway.py", content=SAFE if fixed else UNSAFE),
                            SourceFile(path="test_gateway.py", content=TEST)]).model_dump_json()
    elif seen.vendor == "anthropic" and "security auditor" in text:
        current = text.split("## Current code", 1)[1].split("\n## ", 1)[0]
        verdict = Verdict(decision="approve", summary="no security problem")
        if "eval(" in current:
            verdict = Verdict(decision="revise_code", summary="eval on input", findings=[
                Finding(severity="critical", location="gateway.py:2", target="coder",
                        explanation="eval() on a caller's value: validate the number")])
        reply = verdict.model_dump_json()
    elif seen.vendor == "anthropic":
        reply = Verdict(decision="approve", summary="correct and defensive").model_dump_json()
    else:
        return Canned({"error": {"message": "unknown path"}}, status=404)
    tokens_in, tokens_out = TOKENS[seen.vendor]
    if seen.vendor == "openai":
        return openai_body(reply, prompt_tokens=tokens_in, completion_tokens=tokens_out)
    if seen.vendor == "anthropic":
        return anthropic_body(reply, input_tokens=tokens_in, output_tokens=tokens_out)
    return gemini_body(reply, prompt_tokens=tokens_in, output_tokens=tokens_out)


@pytest.fixture
def vendors(fake_keys: str) -> Iterator[FakeServer]:
    with FakeServer(responder=answer) as server, block_real_models(False):
        yield server  # the only server any SDK reaches


async def run(agents: list[Any], nats_url: str, namespace: str) -> tuple[TaskResult, list[Any]]:
    async with (
        Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        with anyio.fail_after(60):
            wf = await client.submit(TaskRequest(goal=GOAL))
            return await client.result(wf), await client.trail(wf)


def expected_cost(seen: list[Seen], model_of: dict[str, str]) -> float:
    total = 0.0
    for s in seen:
        price = price_for(model_of[s.vendor])
        assert price is not None, model_of[s.vendor]
        tokens_in, tokens_out = TOKENS[s.vendor]
        total += price.cost(input_tokens=tokens_in, output_tokens=tokens_out)
    return total


async def test_four_roles_on_three_vendor_sdks(
    vendors: FakeServer, nats_url: str, namespace: str
) -> None:
    wf = load_workflow(EXAMPLES / "security-review.yaml")

    def build(config: ModelConfig) -> Model:  # the workflow's names, at the loopback fake
        assert isinstance(config, str)
        suffix = "/v1" if config.startswith("openai:") else ""
        return build_model(ModelSpec(name=config, base_url=vendors.url + suffix, max_retries=0))

    result, trail = await run(team(wf, build=build), nats_url, namespace)

    assert result.status == "approved", result.reason
    assert path(trail) == ["task", "design", "implement", "audit", "implement", "audit",
                           "result"]
    assert [s.vendor for s in vendors.requests] == [
        "google", "openai", "anthropic", "openai", "anthropic", "anthropic"]
    (back, _), _ = works(trail, "audit")
    assert [f.location for f in back.state.findings] == ["gateway.py:2"]
    assert Code.model_validate(result.artifacts["code"]).files[0].content == SAFE
    assert result.test_report is not None and result.test_report.ok  # the real sandbox
    # Each step's model is the vendor's, named in the trail and the headers.
    models = [m.provenance.name for m, _ in works(trail, "design") + works(trail, "implement")
              if m.provenance]
    assert models == ["google:gemini-2.5-pro", "openai:gpt-4o", "openai:gpt-4o"]
    assert result.provenance is not None
    assert result.provenance.name == "anthropic:claude-haiku-4-5"
    # Every billed call is in the spend, at the price table's rates, and adds up.
    model_of = {"google": "google:gemini-2.5-pro", "openai": "openai:gpt-4o",
                "anthropic": "anthropic:claude-haiku-4-5"}
    assert result.total.calls == 6 and result.total.unpriced_calls == 0
    assert result.total.input_tokens == 150 + 2 * 120 + 3 * 200
    assert result.total.cost_usd == pytest.approx(expected_cost(vendors.requests, model_of))
    assert {r: u.calls for r, u in result.spend.items()} == {
        "architect": 1, "coder": 2, "auditor": 2, "reviewer": 1}
    steps = [w.usage.priced_cost_usd for w, _ in works(trail, "design") + works(trail, "implement")
             + works(trail, "audit") if w.usage is not None]
    assert result.usage is not None
    assert sum(steps) + result.usage.priced_cost_usd == pytest.approx(result.total.cost_usd)
    # The key reached the fake in each SDK's own header, and nothing of ours stores it.
    assert all(SECRET.encode() not in s.data for s in trail)
    auth = [s.headers.get("authorization", "") + s.headers.get("x-api-key", "")
            + s.headers.get("x-goog-api-key", "") for s in vendors.requests]
    assert all(SECRET in a for a in auth)


async def test_the_seed_example_finds_the_fake_through_the_sdks_base_url_variables(
    vendors: FakeServer, nats_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", vendors.url + "/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", vendors.url)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", vendors.url)
    wf = load_workflow(EXAMPLES / "seed.yaml")
    result, trail = await run(team(wf), nats_url, namespace)  # the models as written
    assert result.status == "approved", result.reason
    assert [s.vendor for s in vendors.requests] == ["google", "openai", "anthropic"]
    assert path(trail) == ["task", "architect", "coder", "result"]
    assert "Design the class structure for a payment processing system" in (
        vendors.requests[0].prompt_text())
    # The seed names current vendor models of the price table: the budget sees every call.
    model_of = {"google": "google:gemini-2.5-pro", "openai": "openai:gpt-4o",
                "anthropic": "anthropic:claude-sonnet-4-5"}
    assert result.total.calls == 3 and result.total.unpriced_calls == 0
    assert result.total.cost_usd == pytest.approx(expected_cost(vendors.requests, model_of))
    assert result.provenance is not None
    assert result.provenance.name == "anthropic:claude-sonnet-4-5"
