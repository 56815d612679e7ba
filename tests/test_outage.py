"""A provider outage end to end: the coder's primary model (the real OpenAI SDK against a
loopback fake) answers 500s and timeouts for a while, then recovers.

While it fails, the fallback (an offline model) answers every step; after two failures
the primary is cooled down and the fake sees no request at all until the cooldown is
over, even once it has recovered; then the primary answers again. The trail records
which model produced each step (``Swarm-Model`` header, ``provenance.name`` and
``provenance.tried``), and every workflow is approved.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest
from _team_helpers import team
from _vendor_fakes import Canned, FakeServer, openai_body, openai_error

from swarmbus.agents import Swarm
from swarmbus.agents.app import offline_models, render_trail
from swarmbus.agents.models import FallbackModel, Model, OpenAIModel, block_real_models
from swarmbus.bus import StoredMessage, SwarmClient
from swarmbus.protocols import Code, SourceFile, Work, headers

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

PRIMARY = "openai:gpt-4o"
FALLBACK = "scripted:coder"
COOLDOWN_S = 8.0
GOOD = Code(files=[
    SourceFile(path="solution.py", content="def solve() -> str:\n    return 'primary'\n"),
    SourceFile(path="test_solution.py",
               content="from solution import solve\n\n\ndef test_solve():\n    assert solve()\n"),
], notes="from the primary")


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    try:
        with block_real_models(False):  # only this loopback fake is called
            yield server
    finally:
        server.stop()


def code_step(trail: list[StoredMessage]) -> tuple[str | None, Work]:
    (stored,) = [s for s in trail if s.subject.endswith(".step.review")]
    msg = stored.decode().message
    assert isinstance(msg, Work) and msg.provenance is not None
    return stored.headers.get(headers.MODEL), msg


async def test_primary_outage_fallback_cooldown_recovery(
    nats_url: str, namespace: str, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-outage")
    # The outage: a 500, then an answer that comes too late (a timeout), then 503s.
    fake.push(openai_error(500), Canned(openai_body(GOOD.model_dump_json()), delay_s=2.0))
    fake.default = openai_error(503)
    primary = OpenAIModel("gpt-4o", base_url=fake.url + "/v1", max_retries=0, timeout_s=0.5)
    offline = offline_models()
    chain = FallbackModel([primary, offline["coder"]], cooldown_s=COOLDOWN_S,
                          failures_before_cooldown=2)
    models: dict[str, Model] = {"architect": offline["architect"], "coder": chain,
                                "reviewer": offline["reviewer"]}
    agents = team(models)

    async with (
        Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        async def run(wf: str) -> tuple[str | None, Work, list[StoredMessage]]:
            # A different goal each time: the response cache must not answer for the model.
            await client.submit(f"Write solve() for case {wf}", workflow_id=wf)
            result = await client.result(wf, timeout_s=20)
            assert result.status == "approved", (wf, result.reason)
            trail = await client.trail(wf)
            model, code = code_step(trail)
            return model, code, trail

        with anyio.fail_after(45):
            # 1-2: the primary fails (500, then a timeout); the fallback answers.
            for wf, failure in (("wf1", "500"), ("wf2", "timeout")):
                before = len(fake.requests)
                model, code, _ = await run(wf)
                assert len(fake.requests) == before + 1, failure  # max_retries=0: one try
                assert model == FALLBACK and code.provenance is not None
                assert code.provenance.name == FALLBACK
                assert code.provenance.tried == [PRIMARY], failure
            cooled_at = time.monotonic()
            assert chain.cooling_down() == [PRIMARY]

            # 3: cooling down, still failing: the fake sees no request at all.
            seen = len(fake.requests)
            model, code, _ = await run("wf3")
            assert model == FALLBACK and code.provenance is not None
            assert code.provenance.tried == [], "a cooled-down model is skipped, not tried"
            # 4: the provider recovers, but the cooldown still holds: still no request.
            fake.default = Canned(openai_body(GOOD.model_dump_json()))
            model, code, _ = await run("wf4")
            assert model == FALLBACK
            assert time.monotonic() - cooled_at < COOLDOWN_S, "the test ran too slowly"
            assert len(fake.requests) == seen, "no request reached the primary while cooled"

            # 5-6: after the cooldown the primary is tried again and answers.
            while chain.cooling_down():
                await anyio.sleep(0.1)
            for wf in ("wf5", "wf6"):
                model, code, trail = await run(wf)
                assert model == PRIMARY and code.provenance is not None
                assert code.provenance.name == PRIMARY and code.provenance.tried == []
                assert code.state.code is not None
                assert code.state.code.notes == "from the primary"
            assert len(fake.requests) == seen + 2

    # The trail says who produced each step (what `swarmbus trail` prints).
    by_topic = {s.subject.split(".", 3)[-1]: s.headers.get(headers.MODEL) for s in trail}
    assert by_topic == {"task": None, "step.implement": "scripted:architect",
                        "step.review": PRIMARY, "result": "scripted:reviewer"}
    rendered = render_trail("wf6", trail)
    assert PRIMARY in rendered and "scripted:architect" in rendered
    # Every request the fake saw was a structured-output request for the coder's Code.
    assert all(r.path == "/v1/chat/completions" for r in fake.requests)
    assert all(r.body["response_format"]["json_schema"]["name"] == "CodeEdits"
               for r in fake.requests)
