"""Helpers for the tests of a run's promises (``test_run_promises``, ``test_run_guards``):
priced scripted models, a workflow from a dict, one run on a real swarm, the CLI's check.

Models are priced (``PRICE``: $1 per million input tokens, none for output) and bill
``Billed(..., input_tokens=250_000)``: $0.25 a call (``CALL_USD``), a binary fraction,
so sums of calls are exact.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from _team_helpers import Script, run_task

from swarmbus.agents.app import main as cli_main
from swarmbus.agents.models import Billed, FunctionModel, ModelRequest, Price
from swarmbus.agents.workflow import compile_workflow, load_workflow
from swarmbus.bus import ConsumerSettings, StoredMessage
from swarmbus.protocols import (
    Code,
    CompiledWorkflow,
    Component,
    Design,
    Finding,
    SourceFile,
    TaskRequest,
    TaskResult,
    Verdict,
    Workflow,
    WorkflowError,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "workflows"
PRICE = Price(input=1.0, output=0.0)
CALL_USD = 0.25
FAST = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=10, max_deliver=3, concurrency=8)


def billed(fn: Callable[[ModelRequest[Any]], Any], name: str, **kw: Any) -> FunctionModel:
    """A model answering ``fn(request)`` and billing $0.25 for each call."""
    return FunctionModel(lambda r: Billed(fn(r), input_tokens=250_000), name=name,
                         price=PRICE, **kw)


def prompt_of(request: ModelRequest[Any]) -> str:
    return request.system + "\n" + "\n".join(m.content for m in request.messages)


def design(_r: ModelRequest[Any]) -> Design:
    return Design(summary="charge(amount) validates the amount",
                  components=[Component(name="charge", responsibility="charges")])


def code(_r: ModelRequest[Any]) -> Code:
    return Code(files=[SourceFile(path="gateway.py", content="def charge(a):\n    return a\n"),
                       SourceFile(path="test_gateway.py", content="def test_x():\n    pass\n")])


def send_back(_r: ModelRequest[Any]) -> Verdict:
    return Verdict(decision="revise_code", summary="not defensive yet", findings=[
        Finding(severity="critical", location="gateway.py:2", target="coder",
                explanation="reject a negative amount")])


def flow(spec: dict[str, Any]) -> CompiledWorkflow:
    return compile_workflow(Workflow.parse(spec))


async def run_one(agents: list[Any], nats_url: str, namespace: str, task: TaskRequest,
                  *, timeout_s: float = 40) -> tuple[TaskResult, list[StoredMessage]]:
    with anyio.fail_after(timeout_s):
        return await run_task(nats_url, namespace, agents, task=task)


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(list(args))
    return code, out.getvalue(), err.getvalue()


def swarmbus_cmd() -> list[str]:
    script = Path(sys.executable).parent / "swarmbus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "swarmbus.agents.app"]


def stored_at(stored: StoredMessage) -> datetime:
    assert stored.time is not None
    return datetime.fromisoformat(stored.time.replace("Z", "+00:00"))


def refused(file: Path, where: str, *words: str) -> None:
    """``load_workflow`` and ``swarmbus workflow check`` refuse ``file`` with a problem at
    ``where`` whose message has ``words``."""
    with pytest.raises(WorkflowError) as caught:
        load_workflow(file)
    problems = caught.value.problems
    assert any(p.path == where and all(w in p.message for w in words) for p in problems), \
        problems
    code, out, err = run_cli("workflow", "check", str(file))
    assert code == 2 and out == "", (code, out, err)
    assert f"{where}: " in err and all(w in err for w in words), err
    assert "Traceback" not in err


def priced_team_models() -> dict[str, FunctionModel]:
    s = Script()
    return {"architect": billed(s.architect, "t:architect"),
            "coder": billed(s.coder, "t:coder"),
            "reviewer": billed(s.reviewer, "t:reviewer")}
