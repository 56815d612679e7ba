"""``run_eval``: every (problem, arm, repeat) through its arm's workflow on a real swarm,
then one authoritative run of the hidden tests on the final code."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from swarmbus.bus import EmbeddedServer, SwarmClient
from swarmbus.protocols import Code, ConfigError, Limits, SwarmbusError, TaskResult, Usage, Work

from .._swarm import Swarm
from ..models import Model, ModelConfig, cost_text
from ..sandbox import SandboxLimits, check_isolation, run_acceptance
from ..workflow import DEFAULT_WORKFLOW, default_tools, load_workflow
from ._arms import Arm, ArmPlan, labels, max_rounds, parse_arm, plan_arm
from ._extras import require
from ._rows import (
    AcceptanceOutcome,
    EvalRow,
    InterruptedRun,
    StepModel,
    append_interrupted,
    append_rows,
    lines_per_function,
    read_interrupted,
    read_rows,
)
from ._suite import SOLUTION_FILE, Problem, load_suite

__all__ = ["RUN_FILE", "EvalConfig", "EvalSummary", "run_eval"]

RUN_FILE = "run.json"
_RESULT_GRACE_S = 30.0  # past the task's own deadline, the harness stops waiting
_STOP_READ_S = 3.0  # at an interrupt, how long a run in flight may read its spend (seconds)


class EvalConfig(BaseModel):
    """One evaluation run (``swarmbus eval run``).

    ``suite``: ``"humaneval"`` or a JSONL file (``load_suite``); ``limit``: its
    first N problems. ``arms``: arm specs (``parse_arm``), the first is the
    baseline of the table's McNemar tests. ``repeats``: runs of each (problem,
    arm). ``budget_usd``: the whole run's spend (rows already in ``out`` and runs
    interrupted earlier included, priced calls only); once reached no new run
    starts (those in flight finish).
    ``models``: role -> model for ``workflow:`` arms' roles without one.
    ``concurrency``: runs in flight at once. ``task_timeout_s`` and
    ``task_budget_usd``: each task's limits (``TaskRequest.limits``).
    ``oracle_feedback``: put the hidden tests in the task, so workflows that run
    ``sandbox.pytest`` learn their pass/fail counts in the loop (an oracle the
    ``single:`` arm lacks; off by default). ``nats``: a NATS URL (default: an
    embedded nats-server on a free port). Raises ``ValidationError`` on bad values.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    suite: str = "humaneval"
    out: Path
    arms: tuple[str, ...] = ("canonical",)
    limit: int | None = Field(None, ge=1)
    repeats: int = Field(1, ge=1)
    budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    models: dict[str, str] = Field(default_factory=dict)
    concurrency: int = Field(2, ge=1, le=256)
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)
    task_timeout_s: float = Field(1800.0, gt=0, allow_inf_nan=False)
    task_budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    oracle_feedback: bool = False
    nats: str | None = None
    progress: bool = False

    @field_validator("arms")
    @classmethod
    def _some_arms(cls, arms: tuple[str, ...]) -> tuple[str, ...]:
        if not arms:
            raise ValueError("give at least one arm")
        return arms


@dataclass(frozen=True)
class EvalSummary:
    """What a run did: rows ``written`` now, ``kept`` from before (resumed), ``not_run``
    (left by the budget), and the whole run's ``spent``: its rows' and interrupted runs'
    calls, tokens and cost (``spent_usd``: its priced part, what ``budget_usd`` counts)."""

    out: Path
    written: int
    kept: int
    not_run: int
    spent: Usage
    budget_reached: bool

    @property
    def spent_usd(self) -> float:
        return self.spent.priced_cost_usd

    @property
    def unpriced_calls(self) -> int:
        return self.spent.unpriced_calls


def workflow_id(task_id: str, repeat: int) -> str:
    """A valid, unique workflow id for (task, repeat): ``HumanEval_0-1a2b3c4d-r0``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", task_id)[:80]
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:8]
    return f"{slug}-{digest}-r{repeat}"


async def run_eval(
    config: EvalConfig, *, build: Callable[[ModelConfig], Model] | None = None
) -> EvalSummary:
    """Run every (problem, arm, repeat) of ``config`` not yet in ``config.out``.

    Each arm is its workflow served by its own agents in a namespace of its own
    (``ev<run><i>``) on a real NATS; the response cache is off. A run submits the
    problem's task (``Problem.task``), waits for the result (at most the task's
    timeout plus 30 s; then it is cancelled and counted as ``no_result``), reads
    the final code, and runs the hidden tests on it once with ``run_acceptance``:
    that run alone decides ``passed`` (a timeout fails). Rows are appended to
    ``out/results.jsonl`` as they finish, so an interrupted run resumes where it
    stopped; ``out/run.json`` keeps the suite, the arms' order and the mode.
    ``build`` makes models from their config (default ``build_model``; tests pass
    scripted ones).

    Raises ``ConfigError`` for a bad suite, arm, model, a role without a model or
    one no workflow arm has, an ``out`` that cannot be made, is in use by another
    run, or holds a run of another suite, mode or per-run settings, or a missing
    isolation the sandbox needs; ``MissingExtraError`` for a missing extra.
    """
    arms = [parse_arm(a) for a in config.arms]
    labels(arms)
    problems = load_suite(config.suite, limit=config.limit)
    tools = default_tools(config.sandbox)
    team_wf = next((a.target for a in arms if a.kind == "workflow"), DEFAULT_WORKFLOW)
    rounds = max_rounds(load_workflow(team_wf))
    roles = {r for a in arms if a.kind == "workflow" for r in load_workflow(a.target).roles}
    stray = sorted(set(config.models) - roles)
    if stray:
        raise ConfigError(f"--models {stray[0]}=...: no workflow arm has a role {stray[0]!r} "
                          f"(their roles: {', '.join(sorted(roles)) or 'none'})")
    plans = [plan_arm(a, rounds=rounds, tools=tools, models=config.models, build=build)
             for a in arms]
    # Model-written code runs in the sandbox: demand the isolation `swarmbus up` demands.
    check_isolation(config.sandbox, untrusted=any(a.kind != "canonical" for a in arms))
    bar_module = require("tqdm", "eval", "the progress bar") if config.progress else None
    out = config.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot make that directory ({e.strerror})") from None
    with _lock(out):
        return await _run_in(out, config, arms, problems, plans, bar_module)


async def _run_in(
    out: Path, config: EvalConfig, arms: list[Arm], problems: list[Problem],
    plans: list[ArmPlan], bar_module: Any,
) -> EvalSummary:
    _remember(out, config, [a.label for a in arms])
    before = read_rows(out)
    done = {r.key for r in before}
    jobs = [(p, plan, r) for r in range(config.repeats) for p in problems for plan in plans
            if (p.task_id, plan.arm.label, r) not in done]
    run = _Run(config, before, read_interrupted(out))
    if jobs:
        bar = (bar_module.tqdm(total=len(jobs), unit="run", desc="eval", file=sys.stderr,
                               dynamic_ncols=True) if bar_module else None)
        try:
            await run.execute(jobs, bar)
        finally:
            if bar is not None:
                bar.close()
    return EvalSummary(out=out, written=run.written, kept=len(before),
                       not_run=len(jobs) - run.started, spent=run.spent,
                       budget_reached=run.stopped)


@contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One ``eval run`` at a time per directory (two would run, and pay, every row
    twice). Raises ``ConfigError`` when another process holds it."""
    with (out / ".lock").open("a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise ConfigError(f"--out {out} is in use by another `swarmbus eval run` (pid "
                              f"{holder}): wait for it to end, or use another --out") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remember(out: Path, config: EvalConfig, arms: list[str]) -> None:
    """Write ``run.json``; refuse a directory that holds a run of another suite, mode
    or per-run settings (rows made under other conditions are not comparable)."""
    path = out / RUN_FILE
    suite = config.suite if config.suite == "humaneval" else str(Path(config.suite).resolve())
    fixed: dict[str, JsonValue] = {
        "suite": suite, "oracle_feedback": config.oracle_feedback,
        "task_timeout_s": config.task_timeout_s, "task_budget_usd": config.task_budget_usd,
        "sandbox_timeout_s": config.sandbox.timeout_s, "models": dict(config.models),
    }
    flags = {"suite": "--suite", "oracle_feedback": "--oracle-feedback",
             "task_timeout_s": "--task-timeout", "task_budget_usd": "--task-budget",
             "sandbox_timeout_s": "--sandbox-timeout", "models": "--models"}
    known: dict[str, Any] = {}
    if path.exists():
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not readable ({e}); remove it or use another --out"
                              ) from None
        for key, now in fixed.items():
            if key in known and known[key] != now:
                raise ConfigError(f"{out} holds a run made with {flags[key]} {known[key]!r}, "
                                  f"not {now!r}: give the same, or use another --out")
    order = list(known.get("arms", []))
    order += [a for a in arms if a not in order]
    record: dict[str, JsonValue] = {**fixed, "arms": list(order)}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


class _Run:
    """The runs of one invocation: bounded concurrency, the budget, progress, rows."""

    def __init__(
        self, config: EvalConfig, before: list[EvalRow], stopped: list[InterruptedRun]
    ) -> None:
        self.config = config
        self.spent = Usage.sum([*(r.usage for r in before), *(r.spent for r in stopped)])
        self.passed = self.finished = self.written = self.started = 0
        self.stopped = False
        self.bar: Any = None
        self.clients: dict[str, SwarmClient] = {}
        self.namespaces: dict[str, str] = {}

    def over_budget(self) -> bool:
        budget = self.config.budget_usd
        return budget is not None and self.spent.priced_cost_usd >= budget

    async def execute(self, jobs: list[tuple[Problem, ArmPlan, int]], bar: Any) -> None:
        self.bar = bar
        token = uuid.uuid4().hex[:8]
        async with AsyncExitStack() as stack:
            url = self.config.nats
            if url is None:
                url = (await stack.enter_async_context(EmbeddedServer())).url
            wanted: dict[str, ArmPlan] = {plan.arm.label: plan for _, plan, _ in jobs}
            for i, (label, plan) in enumerate(wanted.items()):
                ns = self.namespaces[label] = f"ev{token}{i}"
                await stack.enter_async_context(
                    Swarm(plan.agents(), nats=url, namespace=ns, grace_s=5))
                self.clients[label] = await stack.enter_async_context(
                    await SwarmClient.connect(url, namespace=ns))
            slots = anyio.Semaphore(self.config.concurrency)
            async with anyio.create_task_group() as tg:
                for job in jobs:
                    await slots.acquire()
                    if self.over_budget():
                        slots.release()
                        self.stopped = True
                        break
                    self.started += 1
                    tg.start_soon(self._job, job, slots)

    async def _job(self, job: tuple[Problem, ArmPlan, int], slots: anyio.Semaphore) -> None:
        try:
            problem, plan, repeat = job
            try:
                row = await self.run_one(problem, plan, repeat)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._stopped(problem.task_id, plan.arm.label, repeat)
                raise
            await anyio.to_thread.run_sync(append_rows, self.config.out, [row])
            self.written += 1
            self.finished += 1
            self.passed += row.passed
            self.spent += row.usage
            if self.bar is not None:
                unpriced = self.spent.unpriced_calls
                cost = cost_text(self.spent) + (f" ({unpriced} unpriced)" if unpriced else "")
                self.bar.set_postfix_str(
                    f"pass {self.passed}/{self.finished} "
                    f"({self.passed / self.finished:.0%}) spent {cost}", refresh=False)
                self.bar.update(1)
        finally:
            slots.release()

    async def _stopped(self, task: str, label: str, repeat: int) -> None:
        """Record what an interrupted run had spent (``InterruptedRun``), if its task
        reached the stream, within ``_STOP_READ_S``."""
        wf = workflow_id(task, repeat)
        with anyio.move_on_after(_STOP_READ_S):
            status = await self.clients[label].status(wf)
            if status.known:
                append_interrupted(self.config.out, [InterruptedRun(
                    task=task, arm=label, repeat=repeat, workflow_id=wf, spent=status.spent)])

    async def run_one(self, problem: Problem, plan: ArmPlan, repeat: int) -> EvalRow:
        cfg, label = self.config, plan.arm.label
        client = self.clients[label]
        limits = Limits(timeout_s=cfg.task_timeout_s, budget_usd=cfg.task_budget_usd)
        task = problem.task(limits=limits, oracle_feedback=cfg.oracle_feedback,
                            reference=plan.arm.kind == "canonical")
        wf = workflow_id(problem.task_id, repeat)
        started = time.monotonic()
        await client.submit(task, workflow_id=wf)
        result: TaskResult | None
        try:
            result = await client.result(wf, timeout_s=cfg.task_timeout_s + _RESULT_GRACE_S)
        except TimeoutError:
            with suppress(SwarmbusError):
                await client.cancel(wf)
            result = None
        wall = time.monotonic() - started
        code = await _final_code(client, result, plan.code_artifact)
        outcome = None
        if code is not None and code.files:
            report = await run_acceptance(code.files, problem.hidden_tests(), limits=cfg.sandbox)
            outcome = AcceptanceOutcome.of(report)
        total = result.total if result is not None else await _spent(client, wf)
        solution = next((f.content for f in code.files if f.path == SOLUTION_FILE), None) \
            if code is not None else None
        return EvalRow(
            task=problem.task_id, arm=label, repeat=repeat,
            passed=outcome is not None and outcome.ok,
            status=result.status if result is not None else "no_result",
            reason=(result.reason if result is not None else
                    f"no result within {cfg.task_timeout_s + _RESULT_GRACE_S:g} s")[:2000],
            **EvalRow.spend_of(total),
            wall_s=wall, rounds=result.rounds if result is not None else 0,
            steps=await _steps(client, wf, result),
            lines_per_function=lines_per_function(code.files) if code is not None else None,
            acceptance=outcome, solution=solution, oracle_feedback=cfg.oracle_feedback,
            namespace=self.namespaces[label], workflow_id=wf,
        )


async def _spent(client: SwarmClient, wf: str) -> Usage | None:
    """What a run without a result had spent by now, as its stream shows it (None: not
    readable): never recorded as an exact $0."""
    with suppress(SwarmbusError):
        return (await client.status(wf)).spent
    return None


async def _final_code(client: SwarmClient, result: TaskResult | None, name: str) -> Code | None:
    if result is None or name not in result.artifacts:
        return None
    try:
        return Code.model_validate(await client.artifact(result, name))
    except (ValueError, SwarmbusError):
        return None


async def _steps(client: SwarmClient, wf: str, result: TaskResult | None) -> list[StepModel]:
    """The steps that ran, in order, with the model that answered each (from the trail:
    each work message names its producing step and provenance; the result, the last)."""
    out = []
    for stored in await client.trail(wf):
        env = stored.try_decode()
        if env is not None and isinstance(env.message, Work) and env.message.source:
            prov = env.message.provenance
            out.append(StepModel(step=env.message.source, model=prov.name if prov else None))
    if result is not None and result.step:
        prov = result.provenance
        out.append(StepModel(step=result.step, model=prov.name if prov else None))
    return out


def models_option(text: str | None) -> Mapping[str, str]:
    """``role=model,role=model`` -> a mapping. Raises ``ConfigError``."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        role, sep, model = part.partition("=")
        if not sep or not role.strip() or not model.strip():
            raise ConfigError(f"--models {part!r}: give role=model (e.g. coder=openai:gpt-4o)")
        out[role.strip()] = model.strip()
    return out
