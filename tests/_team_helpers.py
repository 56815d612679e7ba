"""Scripted models that play the team on a tiny task (``add`` in ``calc.py``), and
helpers to run the team and read its trail.

The models read the prompt like a real model would (findings addressed to
them, the test report, the current design), so a test picks the path it
wants with a few switches on ``Script``.

As a script, runs one role in its own process until SIGTERM::

    python tests/_team_helpers.py ROLE NATS_URL NAMESPACE [--buggy-first]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel

from swarmbus.agents import Agent, Swarm
from swarmbus.agents.models import (
    FunctionModel,
    Ledger,
    Model,
    ModelRequest,
    ModelResponse,
    current_ledger,
    metered,
)
from swarmbus.agents.workflow import load_workflow
from swarmbus.agents.workflow import team as workflow_team
from swarmbus.bus import StoredMessage, SwarmClient
from swarmbus.protocols import (
    Code,
    Component,
    Design,
    Finding,
    Message,
    SourceFile,
    TaskRequest,
    TaskResult,
    Verdict,
    Work,
    headers,
)
from swarmbus.protocols import topics as topic_names

GOAL = "Write add(a, b) in calc.py, with tests"
DESIGN_V1 = "calc v1: add(a, b) returns a + b"
DESIGN_V2 = "calc v2: add(a, b) returns a + b; rejects non-numbers"
ADD_OK = "def add(a, b):\n    return a + b\n"
ADD_BUG = "def add(a, b):\n    return a - b\n"
ADD_TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
T = TypeVar("T", bound=BaseModel)
_PASSED = re.compile(r"## Test report[^\n]*\s+exit code 0, passed [1-9]\d*, failed 0, errors 0")
CODE_REVIEW = load_workflow("builtin:code-review")


def prompt_of(request: ModelRequest[Any]) -> str:
    return "\n".join(m.content for m in request.messages)


def has_findings(prompt: str) -> bool:
    return "## Findings to address" in prompt


@dataclass(frozen=True)
class Script:
    """How the scripted team behaves.

    ``buggy_first``: the coder's first code fails its own test. ``fix_code``: the
    coder fixes it when the reviewer sends findings. ``design_ok_first``: the
    reviewer accepts the first design. ``fix_design``: the architect revises it
    when sent findings. ``honest_reviewer``: the reviewer reads the test report
    (otherwise it approves whatever it gets, and only grounding stops it).
    """

    buggy_first: bool = False
    fix_code: bool = True
    design_ok_first: bool = True
    fix_design: bool = True
    honest_reviewer: bool = True
    latency_s: float = 0.0
    prefix: str = "t"

    def architect(self, request: ModelRequest[Any]) -> Design:
        p = prompt_of(request)
        revised = has_findings(p) and self.fix_design
        return Design(
            summary=DESIGN_V2 if revised else DESIGN_V1,
            components=[Component(name="add", responsibility="sums two numbers")],
            interfaces=["add(a, b) -> number"],
            files=["calc.py", "test_calc.py"],
            acceptance_criteria=["add(2, 3) == 5"],
        )

    def coder(self, request: ModelRequest[Any]) -> Code:
        p = prompt_of(request)
        buggy = self.buggy_first and not (has_findings(p) and self.fix_code)
        return Code(
            files=[SourceFile(path="calc.py", content=ADD_BUG if buggy else ADD_OK),
                   SourceFile(path="test_calc.py", content=ADD_TEST)],
            notes="first version" if not has_findings(p) else "addressed the findings",
        )

    def reviewer(self, request: ModelRequest[Any]) -> Verdict:
        p = prompt_of(request)
        if not self.design_ok_first and DESIGN_V2 not in p:
            return Verdict(decision="revise_design", summary="design too thin", findings=[
                Finding(severity="major", location="design", target="architect",
                        explanation="say what happens with non-numbers")])
        if self.honest_reviewer and not _PASSED.search(p):
            return Verdict(decision="revise_code", summary="tests fail", findings=[
                Finding(severity="critical", location="calc.py", target="coder",
                        explanation="add(2, 3) must be 5")])
        return Verdict(decision="approve", summary="looks right")

    def models(self) -> dict[str, FunctionModel]:
        n, lat = self.prefix, self.latency_s
        return {
            "architect": FunctionModel(self.architect, name=f"{n}:architect", latency_s=lat),
            "coder": FunctionModel(self.coder, name=f"{n}:coder", latency_s=lat),
            "reviewer": FunctionModel(self.reviewer, name=f"{n}:reviewer", latency_s=lat),
        }


class Priced(Model):
    """Wraps a model and reports a fixed cost and token count per call (like a paid API),
    booked into the current ledger in place of the inner model's free call."""

    def __init__(self, inner: Model, cost_usd: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.cost_usd = cost_usd

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        outer = current_ledger()
        with metered(Ledger()):  # the inner model books its free call here, not outside
            r = await self.inner.complete(request)
        prov = r.provenance.model_copy(
            update={"cost_usd": self.cost_usd, "input_tokens": 100, "output_tokens": 20}
        )
        if outer is not None:
            outer.record(prov)
        return replace(r, provenance=prov)


def team(models: Mapping[str, Model], **kw: Any) -> list[Agent]:
    """The built-in workflow's agents on ``models`` (role -> model), response cache on
    unless ``cache_ttl_s=None`` is passed."""
    kw.setdefault("cache_ttl_s", 3600.0)
    return workflow_team(CODE_REVIEW, models=dict(models), **kw)


async def run_task(
    nats_url: str, namespace: str, agents: list[Agent], *, wf: str = "wf1",
    task: TaskRequest | None = None,
) -> tuple[TaskResult, list[StoredMessage]]:
    """Run ``agents`` in one swarm, submit ``task``, return its result and trail."""
    async with (
        Swarm(agents, nats=nats_url, namespace=namespace, grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        await client.submit(task or TaskRequest(goal=GOAL), workflow_id=wf)
        result = await client.result(wf)
        trail = await client.trail(wf)
    return result, trail


def topics(trail: list[StoredMessage]) -> list[str]:
    return [s.decode().topic for s in trail]


def messages(trail: list[StoredMessage], topic: str) -> list[tuple[Message, dict[str, str]]]:
    out = []
    for s in trail:
        env = s.decode()
        if env.topic == topic:
            out.append((env.message, s.headers))
    return out


def works(trail: list[StoredMessage], source: str) -> list[tuple[Work, dict[str, str]]]:
    """The work messages the step ``source`` published, with their headers."""
    out = []
    for s in trail:
        msg = s.decode().message
        if isinstance(msg, Work) and msg.source == source:
            out.append((msg, s.headers))
    return out


def path(trail: list[StoredMessage]) -> list[str]:
    """The producers in order: ``task``, each work message's source step, ``result``
    (a fired deadline or a cancel request is not a producer: left out)."""
    out = []
    for s in trail:
        env = s.decode()
        msg = env.message
        if env.topic in (topic_names.DEADLINE, topic_names.CANCEL):
            continue
        out.append(msg.source if isinstance(msg, Work) else env.topic)
    return out


def model_header(h: dict[str, str]) -> str | None:
    return h.get(headers.MODEL)


def spawn_role(role: str, nats_url: str, namespace: str, log: Path,
               *, buggy_first: bool = False) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(Path(__file__).resolve()), role, nats_url, namespace]
    if buggy_first:
        args.append("--buggy-first")
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


async def _serve_role(role: str, nats_url: str, namespace: str, script: Script) -> None:
    agents = team(script.models(), roles=[role], supervisor=role == "reviewer")
    await Swarm(agents, nats=nats_url, namespace=namespace, grace_s=5).serve()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["architect", "coder", "reviewer"])
    ap.add_argument("nats")
    ap.add_argument("namespace")
    ap.add_argument("--buggy-first", action="store_true")
    a = ap.parse_args()
    anyio.run(_serve_role, a.role, a.nats, a.namespace,
              Script(buggy_first=a.buggy_first, prefix=f"p{a.role[0]}"))
