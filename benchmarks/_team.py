"""The built-in workflow (architect -> coder -> reviewer) on the generic step runtime,
on scripted models, for the benchmarks.

Used by ``_worker.py team`` (``pipeline.py --paths ...,team`` runs one role per
process; ``load.py`` runs all three in one daemon process).

- The models are swarmbus ``FunctionModel``s that answer every request with a
  fixed small reply (a design, two source files, an approving verdict), as JSON
  text -- validated into the output type like a real provider's reply. Their
  latency is ``latency_s`` (0 for the framework-overhead pipeline, 0.1 s for the
  load test).
- The response cache is off: every workflow makes three real model calls.
- ``sandbox=False`` gives the ``sandbox.pytest`` tool a test runner that returns a
  fixed passing ``TestReport`` (injected through the public ``tools=`` of
  ``team()``, nothing patched) instead of running pytest in a subprocess (~100+ ms
  of CPU per review, which would hide the framework's own cost). Everything else
  is the real step runtime. ``sandbox=True`` uses the real sandbox.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Any

from swarmbus.agents import Agent, Swarm
from swarmbus.agents.models import FunctionModel, Model, ModelRequest
from swarmbus.agents.workflow import SandboxPytest, default_tools, load_workflow, team
from swarmbus.bus import ConsumerSettings
from swarmbus.protocols import Code, Component, Design, SourceFile, TestReport, Verdict

ROLES = ("architect", "coder", "reviewer")

DESIGN = Design(
    summary="A module `solution` with solve() returning a non-empty string.",
    components=[Component(name="solve", responsibility="answers the goal")],
    interfaces=["solve() -> str"],
    files=["solution.py", "test_solution.py"],
    acceptance_criteria=["solve() returns a non-empty string"],
).model_dump_json()
CODE = Code(
    files=[
        SourceFile(path="solution.py", content="def solve() -> str:\n    return 'done'\n"),
        SourceFile(
            path="test_solution.py",
            content="from solution import solve\n\n\ndef test_solve():\n    assert solve()\n",
        ),
    ],
    notes="first version",
).model_dump_json()
VERDICT = Verdict(decision="approve", summary="implements the design; tests pass").model_dump_json()

PASSING = TestReport(passed=1, exit_code=0, output="1 passed (sandbox skipped: benchmark)")


def scripted_models(latency_s: float = 0.0) -> dict[str, Model]:
    """One fixed-reply model per role (replies as JSON text, like a provider's)."""
    replies = {"architect": DESIGN, "coder": CODE, "reviewer": VERDICT}

    def fixed(text: str) -> Any:
        def reply(_request: ModelRequest[Any]) -> str:
            return text

        return reply

    return {
        role: FunctionModel(fixed(replies[role]), name=f"bench:{role}", latency_s=latency_s,
                            keep_requests=10)
        for role in ROLES
    }


async def passing(_files: Sequence[SourceFile]) -> TestReport:
    """BENCHMARK ONLY: the submitted tests "pass" without running."""
    return PASSING.model_copy()


def team_agents(
    roles: Sequence[str],
    *,
    latency_s: float,
    sandbox: bool,
    consumer: ConsumerSettings,
) -> list[Agent]:
    """The workflow's step agents for ``roles`` (cache off), each with ``consumer``;
    the supervisor runs beside the reviewer."""
    tools = default_tools() if sandbox else {"sandbox.pytest": SandboxPytest(passing)}
    return team(
        load_workflow("builtin:code-review"), models=scripted_models(latency_s),
        roles=roles, tools=tools, consumers=dict.fromkeys(roles, consumer),
        supervisor="reviewer" in roles,
    )


async def run_team(
    url: str,
    namespace: str,
    roles: Sequence[str],
    *,
    concurrency: int,
    batch: int,
    latency_s: float,
    sandbox: bool,
    ack_wait_s: float = 30.0,
) -> None:
    """A ``Swarm`` with ``roles`` (Swarm defaults: dead-letter worker, announcements)
    until SIGTERM; prints ``BENCH-READY`` once every consumer is live."""
    settings = ConsumerSettings(concurrency=concurrency, batch=batch, ack_wait_s=ack_wait_s)
    agents = team_agents(roles, latency_s=latency_s, sandbox=sandbox, consumer=settings)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Swarm(agents, nats=url, namespace=namespace, grace_s=10):
        print("BENCH-READY", flush=True)
        await stop.wait()


__all__ = ["PASSING", "ROLES", "passing", "run_team", "scripted_models", "team_agents"]
