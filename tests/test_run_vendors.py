"""A run's promises kept through the vendors' real SDKs (openai, anthropic, google-genai)
against loopback fakes, on a real nats-server, with a real swarm: the deadline cuts a call
in flight, a cancel aborts a call or a retry wait, transient errors are retried while the
deadline allows, the budget lowers ``max_tokens`` to fit or makes no call, and a step
redelivered after its process died right after a paid call has both calls in its spend.

The built-in team (architect -> coder -> reviewer) runs with scripted roles (free) around
one role on a vendor SDK, the sandbox stood in for by a passing report. Every wait is
bounded; time is asserted only as orders of magnitude (a result before the fake would
have answered), and what the fake saw says whether a call was cut or waited out.

As a script, runs the coder of that team in its own process on ``openai:gpt-4o`` at the
fake, dying (``os._exit(9)``) right after its model answered on a first delivery::

    python tests/test_run_vendors.py NATS_URL NAMESPACE FAKE_URL [--cache]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from _fault_helpers import fake_tools
from _team_helpers import ADD_OK, ADD_TEST, GOAL, Script, path, team, works
from _vendor_fakes import (
    Canned,
    FakeServer,
    Seen,
    anthropic_error,
    cut_at_limit,
    gemini_error,
    openai_error,
    reply_body,
)
from agent_proc import settled, until_true, wait_announced
from pydantic import BaseModel

from swarmbus.agents import Agent, Swarm
from swarmbus.agents.models import (
    MIN_OUTPUT_TOKENS,
    CallBound,
    ChatMessage,
    Model,
    ModelRequest,
    ModelSpec,
    block_real_models,
    build_model,
    input_token_bound,
    price_for,
)
from swarmbus.agents.workflow import StepAgent, StepCall
from swarmbus.bus import ConsumerSettings, SwarmClient
from swarmbus.protocols import (
    Code,
    CodeEdits,
    Limits,
    SourceFile,
    TaskRequest,
    TaskResult,
    Usage,
    Verdict,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

HERE = Path(__file__).resolve()
ROLES = ("architect", "coder", "reviewer")
VENDORS = ("openai", "anthropic", "google")
NAMES = {"openai": "openai:gpt-4o", "anthropic": "anthropic:claude-haiku-4-5",
         "google": "google:gemini-2.5-pro"}
FAST = ConsumerSettings(retry_delay_s=0.05, max_retry_delay_s=0.5, ack_wait_s=10,
                        max_deliver=5, concurrency=4)
CODE = Code(files=[SourceFile(path="calc.py", content=ADD_OK),
                   SourceFile(path="test_calc.py", content=ADD_TEST)])
APPROVE = Verdict(decision="approve", summary="correct").model_dump_json()
TOKENS_IN, TOKENS_OUT = 1200, 300


def sdk_model(fake: FakeServer, vendor: str, *, max_retries: int = 0) -> Model:
    """The vendor's model as ``swarmbus up`` builds it, its SDK pointed at ``fake``."""
    suffix = "/v1" if vendor == "openai" else ""
    return build_model(ModelSpec(name=NAMES[vendor], base_url=fake.url + suffix,
                                 max_retries=max_retries))


def call_cost(vendor: str, tokens_in: int = TOKENS_IN, tokens_out: int = TOKENS_OUT) -> float:
    price = price_for(NAMES[vendor])
    assert price is not None, NAMES[vendor]
    return price.cost(input_tokens=tokens_in, output_tokens=tokens_out)


def scripted_team(*, roles: tuple[str, ...] = ROLES, cache_ttl_s: float | None = 3600.0,
                  **on_sdk: Model) -> list[Agent]:
    """The built-in team's ``roles``, each scripted (free) unless ``on_sdk`` gives its model."""
    models: dict[str, Model] = {**Script().models(), **on_sdk}
    return team({r: models[r] for r in roles}, roles=list(roles), tools=fake_tools(),
                consumers=dict.fromkeys(ROLES, FAST), cache_ttl_s=cache_ttl_s)


@asynccontextmanager
async def swarm(agents: list[Agent], nats_url: str, namespace: str
                ) -> AsyncIterator[SwarmClient]:
    async with (
        Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        yield client


def spent_by(result: TaskResult, role: str) -> Usage:
    return result.spend.get(role, Usage())


@pytest.fixture
def vendors(fake_keys: str) -> Iterator[FakeServer]:
    with FakeServer() as server, block_real_models(False):
        yield server  # the only server any SDK reaches


# -- the deadline -----------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
async def test_the_deadline_cuts_the_last_steps_call_in_flight(
    vendor: str, vendors: FakeServer, nats_url: str, namespace: str
) -> None:
    vendors.responder = lambda seen: Canned(reply_body(seen, APPROVE), delay_s=6)
    reviewer = sdk_model(vendors, vendor)
    await reviewer.prepare()  # the SDK imported now, not inside the 2 s
    async with swarm(scripted_team(reviewer=reviewer), nats_url, namespace) as client:
        with anyio.fail_after(30):
            wf = await client.submit(TaskRequest(goal=GOAL, limits=Limits(timeout_s=2)))
            result = await client.result(wf)
            done = time.monotonic()
            # Cut, or waited out: the SDK closes its connection, or the fake answers at 6 s.
            await until_true(lambda: vendors.dropped or vendors.answered)
            trail = await client.trail(wf)
    assert result.status == "deadline_exceeded", result.reason
    assert "passed" in result.reason
    assert [s.vendor for s in vendors.requests] == [vendor]  # the call was in flight
    took = done - vendors.requests[0].at
    assert took < 6, f"the result came {took:.1f} s into the call: not before its answer"
    assert vendors.dropped == vendors.requests and vendors.answered == []
    assert spent_by(result, "reviewer").calls == 0  # the cut call is not in the spend
    assert result.total.cost_usd == 0.0
    assert path(trail) == ["task", "design", "implement", "result"]
    assert result.code is not None  # the best attempt


# -- cancel -----------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
async def test_cancel_aborts_a_call_in_flight(
    vendor: str, vendors: FakeServer, nats_url: str, namespace: str
) -> None:
    vendors.responder = lambda seen: Canned(reply_body(seen, CODE.model_dump_json()), delay_s=5)
    coder = sdk_model(vendors, vendor)
    await coder.prepare()
    async with swarm(scripted_team(coder=coder), nats_url, namespace) as client:
        with anyio.fail_after(30):
            wf = await client.submit(TaskRequest(goal=GOAL))
            await until_true(lambda: vendors.requests)
            await client.cancel(wf, reason="changed my mind")
            result = await client.result(wf)
            took = time.monotonic() - vendors.requests[0].at
            await until_true(lambda: vendors.dropped or vendors.answered)
            await settled(client.bus, "coder@code-review")  # the coder's handler is done
            trail = await client.trail(wf)
    assert result.status == "cancelled", result.reason
    assert took < 5, f"the result came {took:.1f} s into the call: not before its answer"
    assert vendors.dropped == vendors.requests and vendors.answered == []  # aborted
    assert spent_by(result, "coder").calls == 0
    assert path(trail) == ["task", "design", "result"]  # the review never got work
    assert result.design is not None


def rate_limited(vendor: str, retry_after_s: int) -> Canned:
    """A 429 with ``Retry-After`` in the vendor's format (both SDKs honour the header)."""
    headers = {"retry-after": str(retry_after_s)}
    if vendor == "openai":
        return openai_error(429, "slow down", headers=headers)
    return anthropic_error(429, "rate_limit_error", headers=headers)


@pytest.mark.parametrize("sdk_retries", [1, 0], ids=["sdk-retry", "swarmbus-retry"])
@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_cancel_aborts_a_retry_after_wait(
    vendor: str, sdk_retries: int, vendors: FakeServer, nats_url: str, namespace: str
) -> None:
    """A 429 with ``Retry-After: 12``, waited out by the SDK's own retry
    (``max_retries=1``) or by swarmbus's retry in the handler (``max_retries: 0``)."""
    vendors.default = rate_limited(vendor, 12)
    coder = sdk_model(vendors, vendor, max_retries=sdk_retries)
    await coder.prepare()
    async with swarm(scripted_team(coder=coder), nats_url, namespace) as client:
        with anyio.fail_after(40):
            wf = await client.submit(TaskRequest(goal=GOAL))
            await until_true(lambda: vendors.answered)  # the 429 is out: the wait begins
            await anyio.sleep(0.2)
            await client.cancel(wf)
            result = await client.result(wf)
            took = time.monotonic() - vendors.requests[0].at
            # The coder's handler is done: its wait was cut, not waited out (a check before
            # the next call would also stop it, but only 12 s later).
            await settled(client.bus, "coder@code-review")
            ended = time.monotonic() - vendors.requests[0].at
            trail = await client.trail(wf)
    assert result.status == "cancelled", result.reason
    # Orders of magnitude: about a second, against the 12 s the retry would come at.
    assert took < 10, f"the result came {took:.1f} s after the 429"
    assert ended < 10, f"the coder's handler ended {ended:.1f} s after the 429: it waited"
    assert len(vendors.requests) == 1, "a second request reached the fake"
    assert path(trail) == ["task", "design", "result"]


async def test_the_deadline_cuts_the_sdks_own_retry_wait(
    vendors: FakeServer, nats_url: str, namespace: str
) -> None:
    """The SDK waits out a 429's ``Retry-After: 12`` inside one call: the 2 s deadline
    cuts the wait, and no second request is made."""
    vendors.default = rate_limited("openai", 12)
    coder = sdk_model(vendors, "openai", max_retries=1)
    await coder.prepare()
    async with swarm(scripted_team(coder=coder), nats_url, namespace) as client:
        with anyio.fail_after(40):
            wf = await client.submit(TaskRequest(goal=GOAL, limits=Limits(timeout_s=2)))
            result = await client.result(wf)
            await settled(client.bus, "coder@code-review")
            ended = time.monotonic() - vendors.requests[0].at
    assert result.status == "deadline_exceeded", result.reason
    assert ended < 10, f"the coder's handler ended {ended:.1f} s after the 429: it waited"
    assert len(vendors.requests) == 1, "a second request reached the fake"
    assert spent_by(result, "coder").calls == 0  # a 429 is not billed


# -- transient errors ---------------------------------------------------------------------------

DOWN: dict[str, Canned] = {
    "openai": openai_error(503, "overloaded"),
    "anthropic": anthropic_error(529, "overloaded_error"),
    "google": gemini_error(503, "UNAVAILABLE"),
}


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_vendor_down_for_seconds_is_retried_within_the_run(
    vendor: str, vendors: FakeServer, nats_url: str, namespace: str
) -> None:
    first: list[float] = []

    def answer(seen: Seen) -> Canned | dict[str, Any]:
        if not first:
            first.append(seen.at)
        if seen.at - first[0] < 4:
            return DOWN[vendor]
        return reply_body(seen, CODE.model_dump_json(), input_tokens=TOKENS_IN,
                          output_tokens=TOKENS_OUT)

    vendors.responder = answer
    coder = sdk_model(vendors, vendor)
    async with swarm(scripted_team(coder=coder), nats_url, namespace) as client:
        with anyio.fail_after(40):
            wf = await client.submit(TaskRequest(goal=GOAL, limits=Limits(timeout_s=300)))
            result = await client.result(wf)
    assert result.status == "approved", result.reason
    assert len(vendors.requests) >= 3, "the outage was not retried"
    assert len(vendors.answered) == len(vendors.requests)
    # No 5xx is billed: the spend is the one call that answered, at the table's price.
    assert spent_by(result, "coder").calls == 1
    assert result.total.cost_usd == pytest.approx(call_cost(vendor))
    assert result.code == CODE


# -- money --------------------------------------------------------------------------------------

MILLION_TOKENS = '{"files": [{"path": "calc.py", "content": "' + "# more\n" * 600_000


def worst_case(seen: Seen, max_tokens: int) -> float:
    """The most the request the fake saw could cost with ``max_tokens`` of output, bounded
    as the ledger bounds it (its prompts and the schema of the coder's ``CodeEdits``, at
    gpt-4o's prices)."""
    system, user = (m["content"] for m in seen.body["messages"])
    request = ModelRequest(system=system, messages=(ChatMessage(role="user", content=user),),
                           output_type=CodeEdits)
    worst = CallBound(price_for("openai:gpt-4o"), input_token_bound(request),
                      max_tokens).worst_usd()
    assert worst is not None
    return worst


async def test_a_call_that_cannot_fit_the_budget_is_made_with_fewer_output_tokens(
    vendors: FakeServer, nats_url: str, namespace: str
) -> None:
    vendors.responder = cut_at_limit(MILLION_TOKENS, would_write=1_000_000)
    coder = sdk_model(vendors, "openai")
    async with swarm(scripted_team(coder=coder), nats_url, namespace) as client:
        with anyio.fail_after(30):
            wf = await client.submit(TaskRequest(goal=GOAL, limits=Limits(budget_usd=0.05)))
            result = await client.result(wf)
            trail = await client.trail(wf)
    assert result.status == "budget_exceeded", result.reason
    (seen,) = vendors.requests
    limit = seen.body["max_completion_tokens"]
    assert "max_tokens" not in seen.body
    assert MIN_OUTPUT_TOKENS <= limit < 8192, limit  # lowered from the default 8,192
    assert worst_case(seen, limit) <= 0.05 < worst_case(seen, limit + 1)  # the most that fits
    assert f"max_tokens={limit}" in result.reason
    spent = spent_by(result, "coder")
    assert spent.calls == 1 and spent.output_tokens == limit  # cut there, and billed
    assert result.total.cost_usd == pytest.approx(call_cost("openai", seen.input_tokens(), limit))
    assert result.total.cost_usd is not None and result.total.cost_usd <= 0.05
    assert path(trail) == ["task", "design", "result"]


async def test_a_call_whose_256_tokens_cannot_fit_is_not_made(
    vendors: FakeServer, nats_url: str, namespace: str
) -> None:
    vendors.responder = cut_at_limit(MILLION_TOKENS, would_write=1_000_000)
    budget = 0.0025  # 256 output tokens of gpt-4o alone cost $0.00256
    coder = sdk_model(vendors, "openai")
    async with swarm(scripted_team(coder=coder), nats_url, namespace) as client:
        with anyio.fail_after(30):
            wf = await client.submit(TaskRequest(goal=GOAL, limits=Limits(budget_usd=budget)))
            result = await client.result(wf)
    assert result.status == "budget_exceeded", result.reason
    assert vendors.requests == []  # not made
    assert "openai:gpt-4o" in result.reason and "not made" in result.reason
    assert f"before writing {MIN_OUTPUT_TOKENS} tokens" in result.reason
    assert spent_by(result, "coder").calls == 0 and result.total.cost_usd == 0.0


# -- a step redelivered after its process died right after a paid call ----------------------

KILLED = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=2, max_deliver=5, concurrency=4)
BIG = Code(files=[SourceFile(path="calc.py", content=ADD_OK + "# padding to pass 1 MiB\n" * 50_000),
                  SourceFile(path="test_calc.py", content=ADD_TEST)])


class DiesAfterPaying(StepAgent):
    """A coder whose process exits (status 9) right after its model answered on a
    message's first delivery: paid, the answer neither published nor acked."""

    async def perform(self, call: StepCall) -> BaseModel:
        output = await call.ask()
        if call.ctx.deliveries == 1:
            os._exit(9)
        return output


def spawn_coder(nats_url: str, namespace: str, fake: FakeServer, log: Path, *, cache: bool
                ) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(HERE), nats_url, namespace, fake.url]
    if cache:
        args.append("--cache")
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


async def _serve_coder(nats_url: str, namespace: str, fake_url: str, cache: bool) -> None:
    coder = build_model(ModelSpec(name="openai:gpt-4o", base_url=fake_url + "/v1",
                                  max_retries=0))
    agents = team({"coder": coder}, roles=["coder"], classes={"coder": DiesAfterPaying},
                  consumers={"coder": KILLED}, supervisor=False, tools=fake_tools(),
                  cache_ttl_s=3600.0 if cache else None)
    with block_real_models(False):
        await Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3).serve()


@pytest.mark.parametrize(("cache", "answer"), [(False, CODE), (True, BIG)],
                         ids=["cache-off", "cache-on-answer-over-1MiB"])
async def test_a_redelivery_after_a_death_right_after_a_paid_call_books_both_calls(
    cache: bool, answer: Code, vendors: FakeServer, nats_url: str, namespace: str,
    tmp_path: Path, procs: list[subprocess.Popen[bytes]],
) -> None:
    body = answer.model_dump_json()
    if cache:
        assert len(body) > 1024 * 1024  # more than the response cache can hold
    vendors.responder = lambda seen: reply_body(seen, body, input_tokens=TOKENS_IN,
                                                output_tokens=TOKENS_OUT)
    log = tmp_path / "coder.log"
    others = scripted_team(roles=("architect", "reviewer"), cache_ttl_s=3600.0 if cache else None)
    async with swarm(others, nats_url, namespace) as client:
        with anyio.fail_after(60):
            first = spawn_coder(nats_url, namespace, vendors, log, cache=cache)
            procs.append(first)
            await wait_announced(client.bus, "coder", [first.pid])
            wf = await client.submit(TaskRequest(goal=GOAL))
            await until_true(lambda: first.poll() is not None)
            assert first.returncode == 9, log.read_text()[-3000:]
            assert len(vendors.answered) == 1  # it died after its paid call
            again = spawn_coder(nats_url, namespace, vendors, log, cache=cache)
            procs.append(again)
            result = await client.result(wf)
            trail = await client.trail(wf)
            again.send_signal(signal.SIGTERM)
            await until_true(lambda: again.poll() is not None)
    assert result.status == "approved", result.reason
    assert len(vendors.requests) == 2  # the redelivery paid again
    spent = spent_by(result, "coder")
    assert spent.calls == 2, (spent, log.read_text()[-3000:])
    assert spent.cost_usd == pytest.approx(2 * call_cost("openai"))
    assert result.total.cost_usd == pytest.approx(2 * call_cost("openai"))
    (implemented, _), = works(trail, "implement")  # the step's own spend in the trail
    assert implemented.usage is not None and implemented.usage.calls == 2
    assert implemented.usage.cost_usd == pytest.approx(2 * call_cost("openai"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("nats")
    ap.add_argument("namespace")
    ap.add_argument("fake_url")
    ap.add_argument("--cache", action="store_true")
    a = ap.parse_args()
    anyio.run(_serve_coder, a.nats, a.namespace, a.fake_url, a.cache)
