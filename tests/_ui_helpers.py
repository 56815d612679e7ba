"""Runs for the viewer's tests (``test_ui``, ``test_ui_browser``): the built-in team with
priced scripted models and a sandbox stand-in that fails the buggy code, so a run has a
send-back with findings, a diff and two test reports; a task published raw with a
``traceparent``; ``swarmbus ui`` served in this process on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from _team_helpers import GOAL, Priced, Script, team

from swarmbus.agents import Swarm
from swarmbus.agents.app import serve_ui, ui_socket
from swarmbus.agents.models import ModelRequest
from swarmbus.agents.workflow import SandboxPytest
from swarmbus.bus import Bus, SwarmClient, encode
from swarmbus.protocols import (
    Finding,
    Meta,
    SourceFile,
    TaskRequest,
    TestReport,
    Verdict,
    subject,
    topics,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALL_USD = 0.125
"""Each model call's price: a binary fraction, so the sums shown are exact."""


async def judged_by_content(files: Sequence[SourceFile]) -> TestReport:
    """Stands in for the sandbox: the subtraction bug fails the submitted test."""
    buggy = any("a - b" in f.content for f in files)
    if buggy:
        return TestReport(passed=0, failed=1, exit_code=1, failed_tests=["test_calc.py::test_add"],
                          output="FAILED test_calc.py::test_add - assert -1 == 5\n1 failed")
    return TestReport(passed=1, exit_code=0, output="1 passed")


NIT = Finding(severity="minor", location="calc.py:1", target="coder",
              explanation="name the parameters")


class NitScript(Script):
    """The scripted team whose reviewer approves with a minor finding."""

    def reviewer(self, request: ModelRequest[Any]) -> Verdict:
        verdict = super().reviewer(request)
        if verdict.decision == "approve":
            verdict = verdict.model_copy(update={"findings": [NIT]})
        return verdict


def agents(roles: Sequence[str] | None = None) -> list[Any]:
    """The built-in team (coder buggy at first, reviewer honest and approving with a
    minor finding), each call $0.125."""
    models = {role: Priced(m, CALL_USD)
              for role, m in NitScript(buggy_first=True).models().items()}
    return team(models, roles=roles, tools={"sandbox.pytest": SandboxPytest(judged_by_content)})


async def submit_traced(client: SwarmClient, workflow_id: str, goal: str = GOAL,
                        workflow: str | None = None) -> None:
    """Publish a task as another service would, with its own ``traceparent`` (and no
    workflow hash: the task names its workflow, or none for the default)."""
    body, hdrs = encode(TaskRequest(goal=goal, workflow=workflow),
                        Meta(f"task-{workflow_id}", sender="caller"))
    hdrs["traceparent"] = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    await client.bus.publish_raw(subject(client.bus.namespace, workflow_id, topics.TASK),
                                 body, hdrs)


async def finish(nats_url: str, namespace: str, workflow_id: str) -> None:
    """One run of the whole team to its result (a send-back on the way)."""
    async with (Swarm(agents(), nats=nats_url, namespace=namespace, grace_s=3),
                await SwarmClient.connect(nats_url, namespace=namespace) as client):
        await submit_traced(client, workflow_id)
        with anyio.fail_after(40):
            await client.result(workflow_id)


@asynccontextmanager
async def waiting_at_review(nats_url: str, namespace: str,
                            workflow_id: str) -> AsyncIterator[SwarmClient]:
    """A run served by an architect and a coder only: it waits at its review step while
    this is open. Yields a client of the namespace."""
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client, \
            Swarm(agents(roles=["architect", "coder"]), nats=nats_url, namespace=namespace,
                  grace_s=3):
        await submit_traced(client, workflow_id)
        with anyio.fail_after(20):
            while (await client.status(workflow_id)).step != "review":
                await anyio.sleep(0.1)
        yield client


@asynccontextmanager
async def served(nats_url: str, namespace: str, *,
                 trace_url: str = "") -> AsyncIterator[str]:
    """``swarmbus ui`` over ``namespace`` (which must exist) on a free loopback port,
    connected as the command connects: without setting up streams. Yields its URL."""
    bus = await Bus.connect(nats_url, namespace=namespace, setup=False)
    async with SwarmClient(bus) as client, anyio.create_task_group() as tg:
        url = await tg.start(lambda task_status: serve_ui(
            client, ui_socket("127.0.0.1", 0), trace_url=trace_url, task_status=task_status))
        yield url
        tg.cancel_scope.cancel()
