"""The run commands of the CLI against a real swarm: `artifact` prints any artifact,
`retry` resumes a run that ended on a transient cause (and refuses one that did not),
and `submit` stops waiting at the deadline and says why when no agent ends the run."""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import anyio
import pytest
from _fault_helpers import fake_tools
from _team_helpers import GOAL, Script, team

from swarmbus.agents import Swarm
from swarmbus.agents.app import main as cli_main
from swarmbus.agents.models import FunctionModel, ModelRequest, Reply
from swarmbus.bus import ConsumerSettings, SwarmClient
from swarmbus.protocols import TaskRequest

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


async def cli(*args: str, nats_url: str, namespace: str) -> tuple[int, str, str]:
    """The command's entry point, in a worker thread with its own event loop."""

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli_main([*args, "--nats", nats_url, "--namespace", namespace])
        return code, out.getvalue(), err.getvalue()

    return await anyio.to_thread.run_sync(run)


async def test_artifact_prints_any_artifact_of_a_run(nats_url: str, namespace: str) -> None:
    kw = {"nats_url": nats_url, "namespace": namespace}
    with anyio.fail_after(40):
        async with (
            Swarm(team(Script().models(), tools=fake_tools()), nats=nats_url,
                  namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            await client.submit(TaskRequest(goal=GOAL), workflow_id="a1")
            assert (await client.result("a1")).status == "approved"
            code, out, _ = await cli("artifact", "a1", "design", **kw)
            assert code == 0
            assert json.loads(out)["summary"].startswith("calc v1")
            code, out, _ = await cli("artifact", "a1", "code", **kw)
            assert code == 0 and {f["path"] for f in json.loads(out)["files"]} == {
                "calc.py", "test_calc.py"}
            code, _, err = await cli("artifact", "a1", "plan", **kw)
            assert code == 1 and "no artifact 'plan'" in err and "code, design" in err
            code, _, err = await cli("artifact", "nope", "design", **kw)
            assert code == 1 and "no workflow 'nope'" in err
            # cancelling a run that has ended sends nothing and says so
            before = len(await client.trail("a1"))
            code, out, _ = await cli("cancel", "a1", **kw)
            assert code == 0 and "had ended already (approved)" in out
            assert len(await client.trail("a1")) == before


async def test_retry_resumes_a_retryable_run_and_refuses_another(
    nats_url: str, namespace: str
) -> None:
    kw = {"nats_url": nats_url, "namespace": namespace}
    script = Script()
    broken = {"on": True}

    def coder(request: ModelRequest[Any]) -> Reply:
        if broken["on"]:
            raise RuntimeError("the coder's process broke")
        return script.coder(request)

    models = dict(script.models())
    models["coder"] = FunctionModel(coder, name="t:coder")
    fast = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=10, max_deliver=2, concurrency=4)
    with anyio.fail_after(60):
        async with (
            Swarm(team(models, tools=fake_tools(), consumers={"coder": fast}), nats=nats_url,
                  namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            await client.submit(TaskRequest(goal=GOAL), workflow_id="r1")
            assert (await client.result("r1")).retryable
            broken["on"] = False
            code, out, err = await cli("retry", "r1", "--json", **kw)
            assert code == 0, err
            assert json.loads(out)["status"] == "approved"
            code, _, err = await cli("retry", "r1", **kw)
            assert code == 1 and "ended approved" in err


async def test_submit_stops_waiting_at_the_deadline_when_no_agent_ends_the_run(
    nats_url: str, namespace: str
) -> None:
    """No daemon at all runs in the namespace: nothing can end the run, so `submit` stops
    waiting shortly after its deadline and says why, instead of waiting for ever."""
    kw = {"nats_url": nats_url, "namespace": namespace}
    started = time.monotonic()
    with anyio.fail_after(60):
        code, _, err = await cli("submit", GOAL, "--timeout", "1", "--id", "d1", **kw)
    assert code == 1
    assert "deadline" in err and "no agent ended the run" in err and "daemon" in err
    assert time.monotonic() - started < 40  # not for ever


async def test_submit_with_a_daemon_but_no_agent_for_the_step_ends_at_the_deadline(
    nats_url: str, namespace: str
) -> None:
    """The durable timer: the supervisor ends the run at its deadline; `submit` prints the
    deadline_exceeded result and exits 1."""
    kw = {"nats_url": nats_url, "namespace": namespace}
    agents = team(Script().models(), roles=["architect"], tools=fake_tools())
    with anyio.fail_after(60):
        async with Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3):
            code, out, err = await cli("submit", GOAL, "--timeout", "2", "--json", **kw)
    assert code == 1, err
    result = json.loads(out)
    assert result["status"] == "deadline_exceeded"
    assert "implement" in result["reason"] and "coder" in result["reason"]
    assert result["retryable"] is True
