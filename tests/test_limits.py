"""The runtime's promises about ids, deadlines, failures and size, on a real nats-server:
a workflow id is single-use, the deadline counts from submission, a permanent error
ends the workflow at once (paid once), a rate limit's Retry-After is honoured, large
artifacts travel by reference, and too large ones end the workflow with its best attempt."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pytest
from _fault_helpers import fake_tools
from _team_helpers import ADD_OK, GOAL, Script, path, run_task, team

from swarmbus.agents import Swarm
from swarmbus.agents.app import render_trail
from swarmbus.agents.models import (
    FunctionModel,
    Model,
    ModelRequest,
    OutputValidationError,
    ProviderAuthError,
    ProviderRateLimitError,
    ProviderServerError,
    Reply,
)
from swarmbus.bus import (
    ConsumerSettings,
    SwarmClient,
    WorkflowIdTakenError,
    register_secret,
)
from swarmbus.protocols import (
    ArtifactRef,
    Code,
    DeadLetter,
    Limits,
    SourceFile,
    SubjectError,
    TaskRequest,
    TaskResult,
    subject,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

FAST = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=10, max_deliver=5, concurrency=4)


def coder_raising(errors: list[BaseException], script: Script | None = None) -> FunctionModel:
    """A coder that raises ``errors`` in turn, then answers like the script's coder."""
    script = script or Script()
    pending = list(errors)

    def reply(request: ModelRequest[Any]) -> Reply:
        if pending:
            raise pending.pop(0)
        return script.coder(request)

    return FunctionModel(reply, name="t:coder")


def with_coder(coder: Model) -> dict[str, Model]:
    models: dict[str, Model] = dict(Script().models())
    models["coder"] = coder
    return models


# -- workflow ids ----------------------------------------------------------------------------


async def test_a_used_workflow_id_is_never_silently_reused(nats_url: str, namespace: str) -> None:
    models = Script().models()
    async with (
        Swarm(team(models), nats=nats_url, namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        with anyio.fail_after(30):
            first = TaskRequest(goal=GOAL)
            assert await client.submit(first, workflow_id="taken") == "taken"
            result = await client.result("taken")
            # The same task again joins the existing workflow: nothing new is published.
            assert await client.submit(TaskRequest(goal=GOAL), workflow_id="taken") == "taken"
            with pytest.raises(WorkflowIdTakenError, match="'taken' is taken"):
                await client.submit(TaskRequest(goal="something else"), workflow_id="taken")
            # A raw kick-off from another language under the used id: dead-lettered with
            # the reason; the same task raw is a no-op.
            await client.bus.publish_raw(subject(namespace, "taken", "task"),
                                         json.dumps({"goal": "a third thing"}).encode())
            await client.bus.publish_raw(subject(namespace, "taken", "task"),
                                         json.dumps({"goal": GOAL}).encode())
            while (letter := await client.bus.last("taken", "deadletter")) is None:
                await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # the raw duplicate is handled by now
            trail = await client.trail("taken")
            with pytest.raises(SubjectError):
                await client.submit(TaskRequest(goal=GOAL), workflow_id="")
    dl = letter.decode().message
    assert isinstance(dl, DeadLetter) and dl.reason == "id_taken"
    assert "taken by an earlier, different task" in dl.error
    assert result.status == "approved"
    results = [s for s in trail if s.subject.endswith(".result")]
    assert len(results) == 1  # the first workflow untouched
    assert [s.subject.rsplit(".", 1)[1] for s in trail].count("deadletter") == 1
    assert len(models["architect"].requests) == 1


# -- deadlines -------------------------------------------------------------------------------


async def test_the_deadline_counts_from_submission(nats_url: str, namespace: str) -> None:
    """Queued while no agent runs: a typed submission (stamped by the client) and a raw
    kick-off (no stamp: the stream's time) both end deadline_exceeded, no model called."""
    models = Script().models()
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
        with anyio.fail_after(30):
            await client.submit(TaskRequest(goal=GOAL, limits=Limits(timeout_s=1)),
                                workflow_id="typed")
            raw = {"goal": GOAL, "limits": {"timeout_s": 1}}
            await client.bus.publish_raw(subject(namespace, "raw", "task"),
                                         json.dumps(raw).encode())
            await anyio.sleep(1.5)
            async with Swarm(team(models), nats=nats_url, namespace=namespace, grace_s=3):
                typed = await client.result("typed")
                rawr = await client.result("raw")
    for r in (typed, rawr):
        assert r.status == "deadline_exceeded", r.reason
        assert "passed" in r.reason
    assert all(len(m.requests) == 0 for m in models.values())


async def test_a_provider_failing_past_the_deadline_ends_deadline_exceeded(
    nats_url: str, namespace: str
) -> None:
    down = ProviderServerError("503 overloaded", model="t:coder", status_code=503)
    coder = coder_raising([down] * 100)
    task = TaskRequest(goal=GOAL, limits=Limits(timeout_s=2))
    slow = ConsumerSettings(retry_delay_s=0.5, ack_wait_s=10, max_deliver=50, concurrency=4)
    started = time.monotonic()
    result, trail = await run_task(nats_url, namespace,
                                   team(with_coder(coder), consumers={"coder": slow}), task=task)
    took = time.monotonic() - started
    assert result.status == "deadline_exceeded", result.reason
    assert "the deadline passes before t:coder can be tried again" in result.reason
    assert "503" in result.reason
    assert took < 10
    assert result.design is not None  # the best attempt so far
    assert path(trail) == ["task", "design", "result"]


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [
    OutputValidationError("t:coder returned output that does not fit Code", model="t:coder"),
    ProviderAuthError("openai: HTTP 401: Invalid API key: sk-live-REDACTME123456789abcdef",
                      model="t:coder", status_code=401),
])
async def test_a_permanent_error_ends_the_workflow_at_once(
    nats_url: str, namespace: str, error: Exception
) -> None:
    register_secret("sk-live-REDACTME123456789abcdef", source="a test key")
    coder = coder_raising([error])
    result, trail = await run_task(nats_url, namespace,
                                   team(with_coder(coder), consumers={"coder": FAST}))
    assert result.status == "failed", result.reason
    assert len(coder.requests) == 1  # no retry, no second delivery
    assert result.design is not None and result.code is None
    assert "step 'implement' (coder, t:coder)" in result.reason
    assert path(trail) == ["task", "design", "result"]
    # The trail names the model that failed on the result's line, not "-".
    assert render_trail("wf", trail).splitlines()[-1].split()[4:6] == ["coder", "t:coder"]
    for stored in trail:  # a key a provider echoed is in none of the workflow's messages
        assert b"sk-live-REDACTME" not in stored.data
    assert "sk-live-REDACT" not in result.reason


async def test_retry_after_is_honoured(nats_url: str, namespace: str) -> None:
    limited = ProviderRateLimitError("429 slow down", model="t:coder", status_code=429,
                                     retry_after_s=1.5)
    script, seen = Script(), []

    def timed(request: ModelRequest[Any]) -> Reply:
        seen.append(time.monotonic())
        if len(seen) == 1:
            raise limited
        return script.coder(request)

    timed_coder = FunctionModel(timed, name="t:coder")
    result, _ = await run_task(nats_url, namespace,
                               team(with_coder(timed_coder), consumers={"coder": FAST}))
    assert result.status == "approved", result.reason
    assert len(seen) == 2
    assert seen[1] - seen[0] >= 1.5  # not the 0.05 s backoff


# -- size ------------------------------------------------------------------------------------


def code_of_size(n: int) -> Code:
    blob = "# " + "x" * 98 + "\n"
    body = blob * (n // len(blob))
    return Code(files=[SourceFile(path="calc.py", content=ADD_OK + body),
                       SourceFile(path="test_calc.py",
                                  content="from calc import add\n\ndef test_add():\n"
                                          "    assert add(2, 3) == 5\n")])


async def test_a_large_artifact_travels_by_reference(nats_url: str, namespace: str) -> None:
    big = code_of_size(2_000_000)
    coder = FunctionModel(lambda _r: big, name="t:coder")
    async with (
        Swarm(team(with_coder(coder), tools=fake_tools()), nats=nats_url, namespace=namespace,
              grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        with anyio.fail_after(30):
            wf = await client.submit(TaskRequest(goal=GOAL))
            result = await client.result(wf)
            loaded = await client.artifact(result, "code")
            trail = await client.trail(wf)
    assert result.status == "approved", result.reason
    ref = ArtifactRef.of(result.artifacts["code"])
    assert ref is not None and ref.size > 2_000_000
    assert result.code is None  # not inline: read it with client.artifact
    assert Code.model_validate(loaded) == big
    assert ArtifactRef.of(result.artifacts["design"]) is None  # small ones stay inline
    assert max(len(s.data) for s in trail) < 100_000


async def test_too_large_an_output_ends_with_the_best_attempt(
    nats_url: str, namespace: str
) -> None:
    huge = code_of_size(17 * 1024 * 1024)
    coder = FunctionModel(lambda _r: huge, name="t:coder")
    result, trail = await run_task(nats_url, namespace,
                                   team(with_coder(coder), consumers={"coder": FAST}))
    assert result.status == "failed", result.reason
    assert "above the limit of 16,777,216 bytes" in result.reason
    assert len(coder.requests) == 1  # paid once
    assert result.design is not None and result.code is None
    assert isinstance(trail[-1].decode().message, TaskResult)

