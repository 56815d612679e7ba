"""The vendor fakes' responder mode: one loopback server answering all three real SDKs."""

from __future__ import annotations

from typing import Any

import pytest
from _vendor_fakes import (
    Canned,
    FakeServer,
    Plan,
    Seen,
    anthropic_body,
    gemini_body,
    openai_body,
    openai_error,
    plan_request,
)

from swarmbus.agents.models import ModelSpec, build_model

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def echo(seen: Seen) -> Canned | dict[str, Any]:
    """Answers each vendor in its own format with a plan named after the last prompt line."""
    answer = Plan(title=seen.prompt_text().splitlines()[-1], steps=[seen.vendor]).model_dump_json()
    if seen.vendor == "openai":
        return openai_body(answer)
    if seen.vendor == "anthropic":
        return anthropic_body(answer)
    if seen.vendor == "google":
        return gemini_body(answer)
    return Canned({"error": {"message": "unknown vendor"}}, status=404)


async def test_one_responder_serves_three_sdks(fake_keys: str) -> None:
    with FakeServer(responder=echo) as fake:
        fake.push(openai_error(500, headers={}))  # the script goes first, then the responder
        names = [("openai:gpt-4o", "/v1"), ("anthropic:claude-haiku-4-5", ""),
                 ("google:gemini-2.5-flash", "")]
        outputs = []
        for name, suffix in names:
            spec = ModelSpec(name=name, base_url=fake.url + suffix, max_retries=1)
            async with build_model(spec) as model:
                outputs.append((await model.complete(plan_request(f"hello {name}"))).output)
    assert [o.steps for o in outputs] == [["openai"], ["anthropic"], ["google"]]
    assert [o.title for o in outputs] == [f"hello {name}" for name, _ in names]
    assert [s.vendor for s in fake.requests] == ["openai", "openai", "anthropic", "google"]
