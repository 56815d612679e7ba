"""A run that has only its task (no step has handed work on yet) follows the workflow its
task names, not the namespace's default: a dead-lettered entry step ends it ``failed``
(retryable) once, by that workflow; its deadline (its workflow's, or its own) ends it
naming that workflow's entry step and role; ``status`` says who it waits for.

Two daemons share the namespace: the first stores ``essay`` (``design`` by an architect,
then ``review``), which becomes the default; the second serves ``docs`` (``plan`` by a
planner, then ``write``), which tasks name.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from _run_helpers import FAST, flow, stored_at, swarmbus_cmd
from _team_helpers import path

from swarmbus.agents import Agent, Swarm
from swarmbus.agents.models import FunctionModel, ModelRequest
from swarmbus.agents.workflow import team
from swarmbus.bus import WORKFLOWS_BUCKET, SwarmClient, WorkflowStore
from swarmbus.protocols import CompiledWorkflow, Resume, TaskRequest, Text, Verdict, headers

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

DOCS_TIMEOUT_S = 3.0


def essay() -> CompiledWorkflow:
    return flow({"name": "essay",
                 "artifacts": {"design": "swarmbus.Text", "verdict": "swarmbus.Verdict"},
                 "steps": [{"id": "design", "role": "architect", "output": "design"},
                           {"id": "review", "role": "reviewer", "input": "design",
                            "output": "verdict",
                            "routes": {"approve": "end",
                                       "revise_design": {"to": "design", "max": 1},
                                       "revise_code": {"to": "design", "max": 1}}}]})


def docs() -> CompiledWorkflow:
    return flow({"name": "docs", "limits": {"timeout_s": DOCS_TIMEOUT_S},
                 "artifacts": {"plan": "swarmbus.Text", "section": "swarmbus.Text"},
                 "steps": [{"id": "plan", "role": "planner", "output": "plan"},
                           {"id": "write", "role": "writer", "input": "plan",
                            "output": "section"}]})


class Planner:
    """A planner's model that raises while ``down`` (a bug in its code), else plans."""

    def __init__(self, *, down: bool = True, latency_s: float = 0.0) -> None:
        self.down = down
        self.calls = 0
        self.model = FunctionModel(self, name="t:planner", latency_s=latency_s)

    def __call__(self, _r: ModelRequest[Any]) -> Text:
        self.calls += 1
        if self.down:
            raise RuntimeError("the planner exploded on purpose")
        return Text(text="a plan")


def default_daemon(wf: CompiledWorkflow) -> list[Agent]:
    """The first daemon: ``essay``'s roles and the namespace's one supervisor."""
    return team(wf, models={
        "architect": FunctionModel(lambda _r: Text(text="a design"), name="t:architect"),
        "reviewer": FunctionModel(lambda _r: Verdict(decision="approve", summary="fine"),
                                  name="t:reviewer")}, tools={})


def docs_daemon(wf: CompiledWorkflow, planner: Planner | None) -> list[Agent]:
    """The second daemon: ``docs``'s writer, and its planner when given (no supervisor:
    the first daemon's ends its runs)."""
    models = {"writer": FunctionModel(lambda _r: Text(text="a section"), name="t:writer")}
    if planner is not None:
        models["planner"] = planner.model
    return team(wf, models=models, roles=list(models), tools={}, supervisor=False,
                consumers={"planner": FAST})


async def cli_status(workflow_id: str, nats_url: str, namespace: str) -> tuple[int, str, str]:
    """``swarmbus status WORKFLOW_ID`` in its own process: exit code, stdout, stderr."""
    done = await anyio.run_process([*swarmbus_cmd(), "status", workflow_id, "--nats", nats_url,
                                    "--namespace", namespace], check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_an_entry_step_failing_on_every_delivery_ends_its_run_once_by_its_workflow(
    nats_url: str, namespace: str
) -> None:
    default, wf = essay(), docs()
    planner = Planner()
    with anyio.fail_after(60):
        async with (
            Swarm(default_daemon(default), nats=nats_url, namespace=namespace, grace_s=3),
            Swarm(docs_daemon(wf, planner), nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            store = await WorkflowStore.open(client.bus)
            assert await store.resolve(None) == default.hash  # docs is not the default
            await client.submit(TaskRequest(goal="plraise docs", workflow="docs"),
                                workflow_id="dl-1")
            failed = await client.result("dl-1", timeout_s=20)
            # past the run's deadline: the deadline message comes and ends nothing more
            while await client.bus.last("dl-1", "deadline") is None:
                await anyio.sleep(0.1)
            await anyio.sleep(1.0)  # the supervisor's grace, and then some
            trail = await client.trail("dl-1")
            planner.down = False
            marker = await client.retry("dl-1", timeout_s=30)
            resumed = await client.result("dl-1", timeout_s=20)

    assert failed.status == "failed" and failed.retryable, failed.reason
    assert "max_deliveries" in failed.reason and "RuntimeError" in failed.reason
    assert failed.workflow == wf.hash and failed.step == "plan"
    assert planner.calls == 4  # three deliveries, then the one after the retry
    assert path(trail) == ["task", "deadletter", "result"]  # one result, nothing after
    assert [s.subject.rsplit(".", 1)[1] for s in trail][-1] == "deadline"
    (ended,) = [s for s in trail if s.subject.endswith(".result")]
    assert ended.headers[headers.WORKFLOW] == wf.hash
    assert isinstance(marker, Resume) and marker.step == "plan"
    assert resumed.status == "approved" and resumed.workflow == wf.hash, resumed.reason


@pytest.mark.parametrize("own_timeout", [False, True], ids=["its-workflow-s", "the-task-s"])
async def test_the_deadline_ends_a_run_waiting_at_its_entry_step_by_its_workflow(
    nats_url: str, namespace: str, own_timeout: bool
) -> None:
    default, wf = essay(), docs()
    submitted = datetime.now(UTC)
    limits = {"timeout_s": 2.0} if own_timeout else {}
    task = TaskRequest.model_validate({"goal": "plraise docs quick", "workflow": "docs",
                                       "limits": limits, "submitted_at": submitted})
    started = time.monotonic()
    with anyio.fail_after(60):
        async with (
            Swarm(default_daemon(default), nats=nats_url, namespace=namespace, grace_s=3),
            Swarm(docs_daemon(wf, None), nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            await client.submit(task, workflow_id="dl-2")
            status = await client.status("dl-2")
            code, out, err = await cli_status("dl-2", nats_url, namespace)
            result = await client.result("dl-2", timeout_s=20)
            trail = await client.trail("dl-2")
    took = time.monotonic() - started

    # where it stands while it waits: docs's entry step, no planner running
    assert (status.step, status.role, status.live) == ("plan", "planner", False)
    assert status.working == "waiting for planner"
    assert status.workflow == wf.hash and status.consumer == "planner@docs"
    assert code == 0, err
    assert f"waiting: no planner is running in namespace {namespace} for workflow docs" in out
    # how it ended: at its deadline, by docs's graph
    timeout = 2.0 if own_timeout else DOCS_TIMEOUT_S
    assert result.status == "deadline_exceeded", result.reason
    assert "step 'plan' was waiting for the planner" in result.reason
    assert result.workflow == wf.hash and result.step == "plan"
    (ended,) = [s for s in trail if s.subject.endswith(".result")]
    assert ended.headers[headers.WORKFLOW] == wf.hash
    assert stored_at(ended) >= submitted + timedelta(seconds=timeout)  # not before it
    assert took < timeout + 10


async def test_status_names_the_entry_role_at_work_on_a_task_of_another_workflow(
    nats_url: str, namespace: str
) -> None:
    default, wf = essay(), docs()
    planner = Planner(down=False, latency_s=2.0)
    with anyio.fail_after(60):
        async with (
            Swarm(default_daemon(default), nats=nats_url, namespace=namespace, grace_s=3),
            Swarm(docs_daemon(wf, planner), nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            await client.submit(TaskRequest(goal="docs", workflow="docs"),
                                workflow_id="stall-1")
            status = await client.status("stall-1")
            code, out, err = await cli_status("stall-1", nats_url, namespace)
            result = await client.result("stall-1", timeout_s=20)

    assert (status.step, status.role, status.live) == ("plan", "planner", True)
    assert status.working == "planner" and status.workflow == wf.hash
    assert code == 0, err
    assert "planner working on plan" in out and "architect" not in out
    assert result.status == "approved" and result.workflow == wf.hash, result.reason


async def test_the_deadline_its_submitter_armed_ends_a_run_whose_workflow_is_gone(
    nats_url: str, namespace: str
) -> None:
    default, wf = essay(), docs()
    submitted = datetime.now(UTC)
    started = time.monotonic()
    with anyio.fail_after(60):
        async with (
            Swarm(default_daemon(default), nats=nats_url, namespace=namespace, grace_s=3),
            Swarm(docs_daemon(wf, None), nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            await client.submit(TaskRequest(goal="docs", workflow="docs",
                                            submitted_at=submitted), workflow_id="gone-1")
            stored = await client.bus.key_value(WORKFLOWS_BUCKET)
            for key in (wf.hash, "name.docs"):  # expired, say: the store keeps it no longer
                await stored.delete(key)
            result = await client.result("gone-1", timeout_s=20)
            trail = await client.trail("gone-1")
    took = time.monotonic() - started

    assert result.status == "deadline_exceeded", result.reason
    (ended,) = [s for s in trail if s.subject.endswith(".result")]
    assert stored_at(ended) >= submitted + timedelta(seconds=DOCS_TIMEOUT_S)
    assert took < DOCS_TIMEOUT_S + 10  # docs's 3 s, not the default hour
