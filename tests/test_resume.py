"""Resuming a run that ended on a cause another attempt may not meet (``retry``): from
its last completed step, the old spend kept, nothing paid twice, a new deadline; and a
run that ended otherwise is refused."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from _fault_helpers import fake_tools
from _team_helpers import GOAL, Priced, Script, path, team

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel, Model, ModelRequest, ProviderServerError, Reply
from swarmbus.bus import ConsumerSettings, RunNotRetryableError, SwarmClient
from swarmbus.protocols import Limits, Resume, TaskRequest, Work

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

FAST = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=10, max_deliver=2, concurrency=4)


class Switch:
    """A coder that fails (``kind``) while ``down``, then answers like the script's."""

    def __init__(self, kind: str) -> None:
        self.down = True
        self.kind = kind
        self.calls = 0
        self.script = Script()

    def __call__(self, request: ModelRequest[Any]) -> Reply:
        self.calls += 1
        if self.down:
            if self.kind == "crash":
                raise RuntimeError("the coder's process broke")
            raise ProviderServerError("503 overloaded", model="t:coder", status_code=503)
        return self.script.coder(request)


def priced_team(coder: Switch) -> tuple[dict[str, Model], list[Any]]:
    models: dict[str, Model] = {r: Priced(m, 0.01) for r, m in Script().models().items()}
    models["coder"] = Priced(FunctionModel(coder, name="t:coder"), 0.01)
    agents = team(models, tools=fake_tools(), consumers={"coder": FAST})
    return models, agents


async def test_a_step_that_failed_on_every_delivery_resumes_keeping_its_spend(
    nats_url: str, namespace: str
) -> None:
    coder = Switch("crash")
    models, agents = priced_team(coder)
    architect = models["architect"]
    assert isinstance(architect, Priced) and isinstance(architect.inner, FunctionModel)
    with anyio.fail_after(60):
        async with (
            Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf = await client.submit(TaskRequest(goal=GOAL))
            failed = await client.result(wf)
            assert failed.status == "failed" and failed.retryable, failed.reason
            assert "max_deliveries" in failed.reason
            assert failed.spend["architect"].calls == 1
            coder.down = False
            marker = await client.retry(wf, timeout_s=30)
            assert isinstance(marker, Resume) and marker.step == "implement"
            result = await client.result(wf)
            status = await client.status(wf)
            trail = await client.trail(wf)

    assert result.status == "approved", result.reason
    assert result.total.calls == 3  # the architect's one call kept, coder and reviewer once
    assert result.total.priced_cost_usd == pytest.approx(0.03)
    assert len(architect.inner.requests) == 1  # the design was not made again
    assert status.result is not None and status.result.status == "approved"
    # the marker of the resume, then the design's work published again (by the client)
    assert path(trail) == ["task", "design", "deadletter", "result", "resume", "design",
                           "implement", "result"]
    again = [m for s in trail if s.headers.get("Swarm-Sender") == "client"
             and isinstance(m := s.decode().message, Work)]
    assert len(again) == 1 and again[0].usage is None  # counted once: the steps add up
    assert "RuntimeError" in failed.reason  # the last error is named, not only the count


async def test_a_provider_outage_past_the_deadline_resumes_with_a_new_deadline(
    nats_url: str, namespace: str
) -> None:
    coder = Switch("outage")
    _, agents = priced_team(coder)
    with anyio.fail_after(60):
        async with (
            Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf = await client.submit(TaskRequest(goal=GOAL, limits=Limits(timeout_s=1.5)))
            ended = await client.result(wf)
            assert ended.status == "deadline_exceeded" and ended.retryable, ended.reason
            assert "503" in ended.reason
            coder.down = False
            await client.retry(wf, timeout_s=30)
            result = await client.result(wf)

    assert result.status == "approved", result.reason
    assert result.spend["architect"].calls == 1
    assert result.total.priced_cost_usd == pytest.approx(0.03)


async def test_a_run_that_ended_otherwise_is_not_resumed(nats_url: str, namespace: str) -> None:
    models = Script(honest_reviewer=False).models()
    with anyio.fail_after(30):
        async with (
            Swarm(team(models, tools=fake_tools()), nats=nats_url, namespace=namespace,
                  grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf = await client.submit(TaskRequest(goal=GOAL))
            done = await client.result(wf)
            assert done.status == "approved" and not done.retryable
            with pytest.raises(RunNotRetryableError, match="ended approved"):
                await client.retry(wf)
            assert (await client.result(wf)).status == "approved"  # unchanged
