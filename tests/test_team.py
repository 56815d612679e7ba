"""The architect -> coder -> reviewer loop end to end, against a real nats-server with
scripted models: approve, both send-back routes, every limit ending the workflow with
the best attempt, agents in other processes, provider fallback, the CLI, and a
redelivered message that does not pay the provider twice."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import aclosing, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import anyio
import pytest
from _team_helpers import (
    ADD_BUG,
    ADD_OK,
    DESIGN_V1,
    DESIGN_V2,
    GOAL,
    Priced,
    Script,
    messages,
    model_header,
    path,
    run_task,
    spawn_role,
    team,
    works,
)

from swarmbus.agents import Agent, Context, Swarm, handles
from swarmbus.agents.app import main as cli_main
from swarmbus.agents.app import render_status, render_trail
from swarmbus.agents.models import (
    FallbackModel,
    FunctionModel,
    Model,
    ModelRequest,
    ProviderServerError,
    Reply,
)
from swarmbus.agents.workflow import StepAgent, StepCall
from swarmbus.bus import ConsumerSettings, Reject, SwarmClient
from swarmbus.protocols import (
    DeadLetter,
    Limits,
    TaskRequest,
    TaskResult,
    Verdict,
    Work,
    headers,
)

pytestmark = pytest.mark.anyio

FIRST_PASS = ["task", "design", "implement", "result"]


def code_of(result: TaskResult) -> str:
    assert result.code is not None
    return {f.path: f.content for f in result.code.files}["calc.py"]


def swarmbus_cmd() -> list[str]:
    """The installed console script (what users run), else the module."""
    script = Path(sys.executable).parent / "swarmbus"
    if script.exists():
        return [str(script)]
    found = shutil.which("swarmbus")
    return [found] if found else [sys.executable, "-m", "swarmbus.agents.app"]


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    return await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)


def start_daemon(nats_url: str, namespace: str, cwd: Path) -> subprocess.Popen[bytes]:
    """``swarmbus up --offline`` against the test server; its output goes to ``cwd/up.log``."""
    with (cwd / "up.log").open("wb") as out:
        return subprocess.Popen(
            [*swarmbus_cmd(), "up", "--offline", "--nats", nats_url, "--namespace", namespace],
            stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
        )


# -- the loop --------------------------------------------------------------------------------


async def test_approve_on_first_pass(nats_url: str, namespace: str) -> None:
    models = Script(prefix="paid").models()
    priced: dict[str, Model] = {role: Priced(m, 0.001) for role, m in models.items()}
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, team(priced))

    assert result.status == "approved", result.reason
    assert (result.rounds, result.code_revisions, result.design_revisions) == (1, 0, 0)
    assert result.findings == []
    assert result.test_report is not None and result.test_report.ok
    assert result.test_report.passed == 1
    assert code_of(result) == ADD_OK
    assert set(result.spend) == {"architect", "coder", "reviewer"}
    for role, usage in result.spend.items():
        assert usage.calls == 1, role
        assert usage.cost_usd == pytest.approx(0.001), role
        assert usage.input_tokens == 100 and usage.output_tokens == 20, role
    assert result.total.cost_usd == pytest.approx(0.003)
    assert result.total.calls == 3

    assert path(trail) == FIRST_PASS
    assert [s.decode().topic for s in trail] == ["task", "step.implement", "step.review",
                                                  "result"]
    senders = [s.headers.get(headers.SENDER) for s in trail]
    assert senders == ["client", "architect", "coder", "reviewer"]
    assert model_header(trail[0].headers) is None
    for stored, role in zip(trail[1:], ["architect", "coder", "reviewer"], strict=True):
        assert model_header(stored.headers) == f"paid:{role}"
        assert stored.headers[headers.WORKFLOW] == result.workflow
    (design, _), = works(trail, "design")
    assert design.provenance is not None and design.usage is not None
    assert design.provenance.name == "paid:architect"
    assert design.usage.cost_usd == pytest.approx(0.001)
    # the step that ended the workflow shows its own model and cost: steps sum to the total
    assert result.step == "review" and result.usage is not None
    assert result.provenance is not None and result.provenance.name == "paid:reviewer"
    steps = [w.usage.priced_cost_usd
             for w, _ in (*works(trail, "design"), *works(trail, "implement"))
             if w.usage is not None]
    assert sum(steps) + result.usage.priced_cost_usd == pytest.approx(result.total.cost_usd)
    for role in models:
        assert len(models[role].requests) == 1, role


async def test_send_back_to_coder(nats_url: str, namespace: str) -> None:
    models = Script(buggy_first=True).models()
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, team(models))

    assert result.status == "approved", result.reason
    assert (result.code_revisions, result.design_revisions, result.rounds) == (1, 0, 2)
    assert code_of(result) == ADD_OK
    assert result.findings == []
    assert path(trail) == ["task", "design", "implement", "review", "implement", "result"]
    codes = [m for m, _ in works(trail, "implement")]
    assert codes[0].state.code is not None
    assert codes[0].state.code.files[0].content == ADD_BUG
    (revise, h), = works(trail, "review")
    assert revise.edge == "review.revise_code"
    # the reviewer ran the buggy code's tests in the sandbox and saw them fail
    report = revise.state.test_report
    assert report is not None and report.failed == 1 and not report.ok
    assert any("test_add" in t for t in report.failed_tests)
    verdict = revise.state.artifact("verdict", Verdict)
    assert verdict is not None and verdict.decision == "revise_code"
    assert [f.target for f in revise.state.findings] == ["coder"]
    assert h.get(headers.ROUND) == "2"
    assert result.spend["coder"].calls == 2 and result.spend["architect"].calls == 1
    assert len(models["coder"].requests) == 2


async def test_send_back_to_architect(nats_url: str, namespace: str) -> None:
    models = Script(design_ok_first=False).models()
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, team(models))

    assert result.status == "approved", result.reason
    assert (result.design_revisions, result.code_revisions, result.rounds) == (1, 0, 2)
    assert result.design is not None and result.design.summary == DESIGN_V2
    assert path(trail) == ["task", "design", "implement", "review", "design", "implement",
                           "result"]
    (revise, _), = works(trail, "review")
    assert revise.edge == "review.revise_design"
    assert [f.target for f in revise.state.findings] == ["architect"]
    designs = [m for m, _ in works(trail, "design")]
    assert [d.state.design.summary for d in designs if d.state.design] == [DESIGN_V1, DESIGN_V2]
    # the revised design no longer carries the finding it addressed
    assert designs[1].state.findings == []
    assert result.spend["architect"].calls == 2


async def test_code_revision_cap_ends_with_best_attempt(nats_url: str, namespace: str) -> None:
    # The reviewer model approves anything: only the sandbox's facts send the code back.
    models = Script(buggy_first=True, fix_code=False, honest_reviewer=False).models()
    task = TaskRequest(goal=GOAL, limits=Limits(max_code_revisions=1))
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, team(models), task=task)

    assert result.status == "rounds_exhausted", result.reason
    assert "cap 1" in result.reason
    assert result.code_revisions == 1 and result.design_revisions == 0
    assert result.design is not None and result.design.summary == DESIGN_V1
    assert code_of(result) == ADD_BUG
    assert result.findings and all(f.target == "coder" for f in result.findings)
    assert any("test_add" in f.explanation for f in result.findings)
    assert result.test_report is not None and result.test_report.failed == 1
    assert path(trail) == ["task", "design", "implement", "review", "implement", "result"]
    assert len(models["coder"].requests) == 2


async def test_design_revision_cap_ends_with_best_attempt(
    nats_url: str, namespace: str
) -> None:
    models = Script(design_ok_first=False, fix_design=False).models()
    task = TaskRequest(goal=GOAL, limits=Limits(max_design_revisions=1))
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, team(models), task=task)

    assert result.status == "rounds_exhausted", result.reason
    assert "work sent back to the architect 1 times (cap 1)" in result.reason
    assert result.design_revisions == 1 and result.code_revisions == 0
    assert result.design is not None and result.design.summary == DESIGN_V1
    assert code_of(result) == ADD_OK
    assert result.findings and all(f.target == "architect" for f in result.findings)
    assert path(trail) == ["task", "design", "implement", "review", "design", "implement",
                           "result"]
    assert len(models["architect"].requests) == 2


# -- limits ----------------------------------------------------------------------------------


async def test_budget_exhausted(nats_url: str, namespace: str) -> None:
    models = Script(buggy_first=True).models()
    priced: dict[str, Model] = {role: Priced(m, 0.01) for role, m in models.items()}
    task = TaskRequest(goal=GOAL, limits=Limits(budget_usd=0.025))
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, team(priced), task=task)

    # architect (0.01), coder (0.02), reviewer (0.03) -> the coder's revision is over budget
    assert result.status == "budget_exceeded", result.reason
    assert "0.0300 of $0.0250" in result.reason
    assert result.total.cost_usd == pytest.approx(0.03)
    assert {r: u.cost_usd for r, u in result.spend.items()} == pytest.approx(
        {"architect": 0.01, "coder": 0.01, "reviewer": 0.01})
    assert result.design is not None and code_of(result) == ADD_BUG
    assert result.findings and result.findings[0].target == "coder"
    assert path(trail) == ["task", "design", "implement", "review", "result"]
    assert len(models["coder"].requests) == 1  # the over-budget call was never made
    (_, h), = messages(trail, "result")
    assert h.get(headers.SENDER) == "coder"


async def test_deadline(nats_url: str, namespace: str) -> None:
    # The reviewer's call would outlast the deadline (timeout_s from submission) by far:
    # it is cut at the deadline, and the run ends then with the best attempt so far.
    script = Script(buggy_first=True)
    models = script.models()
    models["reviewer"] = FunctionModel(script.reviewer, name="t:reviewer", latency_s=6)
    task = TaskRequest(goal=GOAL, limits=Limits(timeout_s=2.0))
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, team(models), task=task)

    assert result.status == "deadline_exceeded", result.reason
    assert "deadline" in result.reason and "passed" in result.reason
    assert result.spend["reviewer"].calls == 0  # its call was cut: it never answered
    assert result.design is not None and code_of(result) == ADD_BUG
    assert result.findings and result.findings[0].target == "coder"
    assert result.test_report is not None and result.test_report.failed == 1
    assert path(trail) == ["task", "design", "implement", "result"]
    assert len(models["coder"].requests) == 1
    (_, h), = messages(trail, "result")
    assert h.get(headers.SENDER) == "reviewer"


async def test_cancel_mid_run(nats_url: str, namespace: str) -> None:
    models = Script(latency_s=0.6).models()
    with anyio.fail_after(20):
        async with (
            Swarm(team(models), nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf = await client.submit(TaskRequest(goal=GOAL))
            async with aclosing(client.events(wf)) as events:
                async for env in events:
                    if isinstance(env.message, Work):
                        break
            # the coder is in its model call now; the reviewer must not call its model
            await client.cancel(wf)
            result = await client.result(wf)
            status = await client.status(wf)

    assert result.status == "cancelled", result.reason
    assert result.design is not None and result.design.summary == DESIGN_V1
    assert result.code is None  # the call under way was aborted: nothing handed on
    assert len(models["reviewer"].requests) == 0
    assert len(models["coder"].requests) == 1
    assert status.result is not None and status.result.status == "cancelled"
    assert status.working == "done"


async def test_status_names_a_role_nobody_runs(nats_url: str, namespace: str) -> None:
    models = Script().models()
    models["architect"].price = "unpriced"  # what its call cost is unknown: never "$0"
    agents = team(models, roles=["architect", "reviewer"])
    with anyio.fail_after(20):
        async with (
            Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            wf = await client.submit(TaskRequest(goal=GOAL))
            async with aclosing(client.events(wf)) as events:
                async for env in events:
                    if isinstance(env.message, Work):
                        break
            while (status := await client.status(wf)).live is None:
                await anyio.sleep(0.05)
    assert (status.step, status.role, status.live) == ("implement", "coder", False)
    assert status.working == "waiting for coder"
    assert (status.spent.calls, status.spent.unpriced_calls, status.spent.cost_usd) == (1, 1, None)
    assert render_status(status, namespace) == (
        f"{wf}: running; waiting: no coder is running in namespace {namespace} for workflow "
        "code-review, round 1, "
        f"{status.steps} messages, spent cost unknown")


# -- processes -------------------------------------------------------------------------------


async def test_roles_in_separate_processes(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    for role in ("architect", "coder", "reviewer"):
        procs.append(spawn_role(role, nats_url, namespace, tmp_path / f"{role}.log",
                                buggy_first=True))
    with anyio.fail_after(30):
        async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
            wf = await client.submit(TaskRequest(goal=GOAL))
            result = await client.result(wf)
            trail = await client.trail(wf)
        assert result.status == "approved", result.reason
        assert result.code_revisions == 1
        # every step was taken by the process of its role (model names carry the process)
        models = [model_header(s.headers) for s in trail]
        assert models == [None, "pa:architect", "pc:coder", "pr:reviewer", "pc:coder",
                          "pr:reviewer"]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [await wait_exit(p) for p in procs]
    assert codes == [0, 0, 0], [(tmp_path / f"{r}.log").read_text()[-2000:]
                                for r in ("architect", "coder", "reviewer")]


async def test_daemon_offline_then_sigterm(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "up.log"
    daemon = start_daemon(nats_url, namespace, tmp_path)
    procs.append(daemon)
    with anyio.fail_after(30):
        async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
            wf = await client.submit(TaskRequest(
                goal="Write fizzbuzz(n) returning the FizzBuzz strings for 1..n"))
            result = await client.result(wf)
            trail = await client.trail(wf)
        assert result.status == "approved", (result.reason, log.read_text()[-3000:])
        assert result.code_revisions == 1  # the demo script's buggy first code
        assert model_header(trail[2].headers) == "scripted:coder"
        daemon.send_signal(signal.SIGTERM)
        code = await wait_exit(daemon)
    assert code == 0, log.read_text()[-3000:]
    assert not (tmp_path / ".swarmbus").exists()  # no embedded server with --nats


# -- models ----------------------------------------------------------------------------------


async def test_provider_failure_mid_workflow_falls_back(nats_url: str, namespace: str) -> None:
    script = Script(buggy_first=True)
    calls = {"primary": 0}

    def primary(request: ModelRequest[Any]) -> Reply:
        calls["primary"] += 1
        if calls["primary"] == 1:
            return script.coder(request)
        raise ProviderServerError("503 overloaded", model="primary:coder", status_code=503)

    backup = FunctionModel(script.coder, name="backup:coder")
    models: dict[str, Model] = dict(script.models())
    models["coder"] = FallbackModel([FunctionModel(primary, name="primary:coder"), backup])
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, team(models))

    assert result.status == "approved", result.reason
    assert calls["primary"] == 2 and len(backup.requests) == 1
    codes = works(trail, "implement")
    assert [model_header(h) for _, h in codes] == ["primary:coder", "backup:coder"]
    provs = [m.provenance for m, _ in codes]
    assert provs[0] is not None and provs[1] is not None
    assert provs[0].name == "primary:coder" and provs[0].tried == []
    assert provs[1].name == "backup:coder" and provs[1].tried == ["primary:coder"]
    assert result.spend["coder"].calls == 2
    shown = render_trail("wf1", trail)
    assert "primary:coder" in shown and "backup:coder" in shown


async def test_provider_down_for_good_fails_with_best_attempt(
    nats_url: str, namespace: str
) -> None:
    script = Script()

    def down(request: ModelRequest[Any]) -> Reply:
        raise ProviderServerError("503 overloaded", model="down:coder", status_code=503)

    models: dict[str, Model] = dict(script.models())
    coder_model = FunctionModel(down, name="down:coder")
    models["coder"] = coder_model
    fast = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=10, max_deliver=3, concurrency=4)
    agents = team(models, consumers={"coder": fast})
    task = TaskRequest(goal=GOAL, limits=Limits(timeout_s=3))
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, agents, task=task)

    # retried with a growing delay while the deadline allowed, in the same delivery
    assert result.status == "deadline_exceeded", result.reason
    assert "can be tried again" in result.reason and "503" in result.reason
    assert result.design is not None and result.design.summary == DESIGN_V1
    assert result.code is None
    assert len(coder_model.requests) >= 4
    assert path(trail) == ["task", "design", "result"]


class CoderCrashingOnce(StepAgent):
    """Crashes after its model answered, on the first delivery only."""

    crashes = 0

    async def perform(self, call: StepCall) -> Any:
        answer = await super().perform(call)
        if call.ctx.deliveries == 1:
            type(self).crashes += 1
            raise RuntimeError("crash after the model answered")
        return answer


async def test_redelivered_message_does_not_pay_twice(nats_url: str, namespace: str) -> None:
    models: dict[str, Model] = dict(Script().models())
    inner = models["coder"]
    assert isinstance(inner, FunctionModel)
    models["coder"] = Priced(inner, 0.01)
    fast = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=10, max_deliver=3, concurrency=4)
    agents = team(models, consumers={"coder": fast}, classes={"coder": CoderCrashingOnce})
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, agents)

    assert CoderCrashingOnce.crashes == 1
    assert result.status == "approved", result.reason
    assert len(inner.requests) == 1  # the redelivery was answered from the cache
    # ...and the call the crashed attempt paid for is still charged, once.
    assert result.spend["coder"].calls == 1
    assert result.spend["coder"].cost_usd == pytest.approx(0.01)
    (code, _), = works(trail, "implement")  # and published once
    assert code.provenance is not None and code.provenance.from_cache
    assert code.provenance.name == "t:coder"


@pytest.mark.parametrize("shared", [False, True])
async def test_a_resubmitted_task_gets_fresh_answers(
    nats_url: str, namespace: str, shared: bool
) -> None:
    """The cache serves redeliveries of one workflow; a new workflow with the same goal
    pays for fresh answers unless sharing across workflows is set explicitly."""
    models = Script().models()
    priced = {role: Priced(m, 0.01) for role, m in models.items()}
    with anyio.fail_after(20):
        async with (
            Swarm(team(priced, share_cache=shared), nats=nats_url, namespace=namespace,
                  grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            results = []
            for wf in ("first", "second"):
                await client.submit(TaskRequest(goal=GOAL), workflow_id=wf)
                results.append(await client.result(wf))
            second = await client.trail("second")

    assert [r.status for r in results] == ["approved", "approved"]
    assert results[0].total.cost_usd == pytest.approx(0.03)
    for role in ("architect", "coder"):
        assert len(models[role].requests) == (1 if shared else 2), role
    (m2, h2), = works(second, "design")
    assert m2.provenance is not None and m2.provenance.from_cache is shared
    assert model_header(h2) == "t:architect"
    if shared:  # a fresh hit costs nothing now, and says it came from the cache
        assert results[1].total.cost_usd == pytest.approx(0.0)
        assert results[1].total.cache_hits == 3 and results[1].total.calls == 0
    else:
        assert results[1].total.cost_usd == pytest.approx(0.03)
        assert results[1].total.cache_hits == 0 and results[1].total.calls == 3


# -- CLI -------------------------------------------------------------------------------------


async def cli(*args: str, nats_url: str, namespace: str) -> subprocess.CompletedProcess[bytes]:
    """The real command, as its own process."""
    return await anyio.run_process(
        [*swarmbus_cmd(), *args, "--nats", nats_url, "--namespace", namespace], check=False)


async def cli_here(*args: str, nats_url: str, namespace: str) -> tuple[int, str]:
    """The same entry point in this process (a worker thread with its own event loop):
    importing the model SDKs costs each new process seconds on a small machine."""

    def run() -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli_main([*args, "--nats", nats_url, "--namespace", namespace])
        return code, out.getvalue()

    return await anyio.to_thread.run_sync(run)


async def test_cli_against_running_swarm(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "up.log"
    kw = {"nats_url": nats_url, "namespace": namespace}
    ran: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def submit(name: str, *args: str) -> None:
        ran[name] = await cli("submit", GOAL, "--json", *args, **kw)

    with anyio.fail_after(60):
        code, text = await cli_here("cancel", "cli-cancel", **kw)
        assert code == 1  # an unknown workflow id is said to be unknown
        # submitted while no agent runs, cancelled before any step: it ends before its
        # first model call once the daemon starts
        code, text = await cli_here("submit", GOAL, "--no-wait", "--id", "cli-cancel", **kw)
        assert code == 0 and text.strip() == "cli-cancel"
        code, text = await cli_here("status", "cli-cancel", **kw)
        assert code == 0 and "waiting: no swarm has started in namespace" in text, text
        code, text = await cli_here("cancel", "cli-cancel", **kw)
        assert code == 0 and "cancel requested for cli-cancel" in text
        procs.append(start_daemon(nats_url, namespace, tmp_path))
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit, "approved")
            tg.start_soon(submit, "cancelled", "--id", "cli-cancel")
        r = ran["approved"]
        assert r.returncode == 0, (r.stderr.decode(), log.read_text()[-2000:])
        out = json.loads(r.stdout)
        assert out["status"] == "approved" and out["workflow_id"]
        assert "submitted" in r.stderr.decode()
        r = ran["cancelled"]
        assert r.returncode == 1, r.stderr.decode()
        assert json.loads(r.stdout)["status"] == "cancelled"
        assert json.loads(r.stdout)["workflow_id"] == "cli-cancel"

        code, text = await cli_here("submit", GOAL, "--no-wait", "--id", "cli-nowait", **kw)
        assert code == 0 and text.strip() == "cli-nowait"
        async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
            assert (await client.result("cli-nowait")).status == "approved"

        code, text = await cli_here("status", "cli-nowait", "--json", **kw)
        assert code == 0
        st = json.loads(text)
        assert st["known"] and st["working"] == "done" and st["steps"] == 4
        assert st["result"]["status"] == "approved"
        code, text = await cli_here("status", "cli-nowait", **kw)
        assert code == 0 and "cli-nowait: approved" in text
        code, text = await cli_here("status", "no-such-workflow", **kw)
        assert code == 1 and "unknown" in text

        code, text = await cli_here("trail", "cli-nowait", **kw)
        assert code == 0
        assert "trail of cli-nowait: 4 messages" in text
        for word in ("task", "design -> implement", "implement -> review",
                     "review -> result", "scripted:architect", "scripted:coder",
                     "scripted:reviewer", "APPROVED"):
            assert word in text, word
        code, text = await cli_here("trail", "cli-nowait", "--json", **kw)
        assert code == 0
        steps = json.loads(text)
        assert [s["type"] for s in steps] == [
            "swarmbus.TaskRequest/1", "swarmbus.Work/1", "swarmbus.Work/1",
            "swarmbus.TaskResult/1"]
        assert steps[2]["headers"][headers.MODEL] == "scripted:coder"
        code, text = await cli_here("trail", "no-such-workflow", **kw)
        assert code == 1


async def test_cli_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBUS_")}
    with anyio.fail_after(60):
        r = await anyio.run_process([*swarmbus_cmd(), "demo"], check=False, cwd=tmp_path,
                                    env=env)
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr.decode()[-3000:])
    assert "trail of demo-fizzbuzz" in out and "trail of demo-slugify" in out
    assert "revise_code" in out and "revise_design" in out
    assert out.count(": approved") == 2
    assert "demo passed" in r.stderr.decode()


class _GivesUpOnCode(Agent):
    """A custom agent beside the reviewer on its step that rejects everything."""

    name = "strict_auditor"

    @handles("step.review")
    async def on_code(self, msg: Work, ctx: Context[Work]) -> None:
        raise Reject("not auditing today")


async def test_custom_agent_giving_up_does_not_end_the_workflow(
    nats_url: str, namespace: str
) -> None:
    agents = [*team(Script().models()), _GivesUpOnCode()]
    with anyio.fail_after(20):
        result, trail = await run_task(nats_url, namespace, agents)
        # the dead letter is published before the reviewer's result, or soon after
        async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
            while not messages(trail, "deadletter"):
                await anyio.sleep(0.05)
                trail = await client.trail("wf1")
    assert result.status == "approved"
    assert len(messages(trail, "result")) == 1  # only the reviewer's
    (letter, _), = messages(trail, "deadletter")
    assert isinstance(letter, DeadLetter)
    assert letter.agent == "strict_auditor" and "not auditing today" in letter.error
