"""Smoke tests against the real APIs; each runs only when its key is set."""

from __future__ import annotations

import os

import pytest
from _vendor_fakes import Plan, plan_request

from swarmbus.agents.models import block_real_models, build_model

pytestmark = [pytest.mark.anyio, pytest.mark.real_provider, pytest.mark.timeout(60)]

CASES = [
    ("openai:gpt-4o-mini", ("OPENAI_API_KEY",)),
    ("anthropic:claude-haiku-4-5", ("ANTHROPIC_API_KEY",)),
    ("google:gemini-2.5-flash", ("GEMINI_API_KEY", "GOOGLE_API_KEY")),
]


@pytest.mark.parametrize(("name", "envs"), CASES, ids=[c[0] for c in CASES])
async def test_real_provider(name: str, envs: tuple[str, ...]) -> None:
    if not any(os.environ.get(e) for e in envs):
        pytest.skip(f"set {' or '.join(envs)} to run")
    with block_real_models(False):
        async with build_model(name) as model:
            response = await model.complete(
                plan_request("A three-step plan to boil an egg.", max_tokens=2000)
            )
    assert isinstance(response.output, Plan) and response.output.steps
    p = response.provenance
    assert p.input_tokens > 0 and p.output_tokens > 0 and p.cost_usd is not None
