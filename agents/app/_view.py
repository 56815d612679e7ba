"""What ``swarmbus ui`` shows, folded from the stream alone: a row per run (``RunRow``,
kept up to date message by message) and one run as a timeline (``run_view``, from its
stored messages and the workflow it follows)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from swarmbus.bus import Envelope, StoredMessage, WorkflowStatus, apply_event
from swarmbus.protocols import (
    END,
    Cancel,
    CompiledWorkflow,
    DeadLetter,
    Finding,
    ItemResult,
    Message,
    Resume,
    TaskRequest,
    TaskResult,
    TestReport,
    Usage,
    Work,
    route_key,
    topics,
)

from ..workflow import mermaid
from ._render import cost, describe

__all__ = ["Entry", "ItemRow", "RunRow", "RunView", "run_view", "status_word", "trace_id"]


def status_word(st: WorkflowStatus) -> str:
    """``running``; ``waiting`` when no live agent serves its step (``st.live`` False);
    ``stalled`` (storage full); or how it ended (``approved``, ``failed``, ...)."""
    if st.result is not None:
        return st.result.status
    if st.stalled:
        return "stalled"
    return "waiting" if st.live is False else "running"


def trace_id(headers: dict[str, str]) -> str:
    """The W3C trace id in a message's ``traceparent`` (32 hex digits), or ''."""
    parts = headers.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


class _Standing:
    """What a row and a run's page both say of a run: its status word and spend."""

    status: WorkflowStatus

    @property
    def word(self) -> str:
        return status_word(self.status)

    @property
    def cost(self) -> str:
        return cost(self.status.spent)


@dataclass(slots=True)
class RunRow(_Standing):
    """One run in the list: where it stands (``status``), when it started and last moved
    (ISO 8601, UTC, the stream's times), its goal and its trace id."""

    status: WorkflowStatus
    started: str = ""
    updated: str = ""
    goal: str = ""
    trace_id: str = ""
    version: int = 0
    """Bumped by every message of the run (what a live page waits on)."""

    def apply(self, stored: StoredMessage, env: Envelope[Message] | None) -> None:
        """Fold one of the run's messages in, decoded as ``env`` (None: undecodable,
        which only counts and moves ``updated``)."""
        self.version += 1
        self.status.steps += 1
        if stored.time:
            self.started = self.started or stored.time
            self.updated = stored.time
        self.trace_id = self.trace_id or trace_id(stored.headers)
        if env is None:
            return
        if isinstance(env.message, TaskRequest) and not self.goal:
            self.goal = env.message.goal
        apply_event(self.status, env)


@dataclass(frozen=True, slots=True)
class ItemRow:
    """One item of a join: its name, how it came out (``ok``, ``reused``, ``failed:
    ...``), its model and cost."""

    key: str
    outcome: str
    model: str
    cost: str


def _joined(value: Any) -> list[ItemRow]:
    items = value.get("items") if isinstance(value, dict) else None
    out = []
    for raw in items if isinstance(items, list) else []:
        with contextlib.suppress(ValueError):
            r = ItemResult[Any].model_validate(raw)
            how = "reused" if r.reused else ("ok" if r.ok else f"failed: {r.reason}")
            out.append(ItemRow(r.key or str(r.index), how,
                               r.provenance.name if r.provenance is not None else "",
                               cost(r.usage)))
    return out


@dataclass(slots=True)
class Entry:
    """One line of a run's timeline: a step's output (``kind`` ``step``), the task, the
    result, a dead letter, a cancel or a resume. Times are the stream's (ISO 8601);
    ``model_s`` is the model's time for the step, ``step_s`` the time from its work's
    arrival in the stream to its output (waiting included), both in seconds."""

    seq: int
    time: str
    kind: str
    title: str
    agent: str = ""
    model: str = ""
    usage: Usage | None = None
    model_s: float | None = None
    step_s: float | None = None
    edge: str = ""
    send_back: str = ""
    """The step work went back to (an edge to a step that had run already)."""
    summary: str = ""
    findings: list[Finding] = field(default_factory=list)
    diff: str = ""
    report: TestReport | None = None
    items: list[str] = field(default_factory=list)
    """A fan-out's items published so far (their names), of ``total``."""
    total: int = 0
    joined: list[ItemRow] = field(default_factory=list)
    """A join's items: how each came out."""

    @property
    def cost(self) -> str:
        return cost(self.usage) if self.usage is not None else ""

    @property
    def title_items(self) -> str:
        return f"{len(self.items)} of {self.total} items" if self.total else ""

    @property
    def tokens(self) -> str:
        u = self.usage
        if u is None or not (u.input_tokens or u.output_tokens):
            return ""
        cached = f" ({u.cached_tokens:,} cached)" if u.cached_tokens else ""
        return f"{u.input_tokens:,} in{cached} / {u.output_tokens:,} out"


@dataclass(slots=True)
class RunView(_Standing):
    """One run: its status, workflow (None when no stored workflow has its hash), graph
    (Mermaid, the edges taken highlighted), timeline and trace id."""

    workflow_id: str
    status: WorkflowStatus
    workflow: CompiledWorkflow | None
    graph: str
    entries: list[Entry]
    goal: str
    trace_id: str


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return max(0.0, (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds())


def _findings(value: Any) -> list[Finding]:
    """A verdict's own findings (the output's ``findings``), however it routed."""
    raw = value.get("findings") if isinstance(value, dict) else None
    out = []
    for f in raw if isinstance(raw, list) else []:
        with contextlib.suppress(ValueError):
            out.append(Finding.model_validate(f))
    return out


def _summary(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("summary", "notes"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return ""


def _finish_edge(wf: CompiledWorkflow | None, result: TaskResult) -> set[str]:
    """The edge to the end a result's step took (a finish is not counted in the state's
    edges): its route read from the step's output, as ``route`` read it."""
    step = wf.steps.get(result.step) if wf is not None else None
    if wf is None or step is None:
        return set()
    if not step.routes:
        return {f"{step.id}.next"} if wf.successor(step.id) == END else set()
    value = result.artifacts.get(step.output or "")
    if not isinstance(value, dict) or step.route_on not in value:
        return set()
    key = route_key(value[step.route_on])
    edge = step.routes.get(key)
    return {f"{step.id}.{key}"} if edge is not None and edge.to == END else set()


def _output(wf: CompiledWorkflow | None, step: str) -> str:
    found = wf.steps.get(step) if wf is not None else None
    return found.output or "" if found is not None else ""


def run_view(workflow_id: str, trail: list[StoredMessage],
             workflow: CompiledWorkflow | None) -> RunView:
    """The run as the page shows it, from its stored messages (oldest first)."""
    st = WorkflowStatus(workflow_id, known=bool(trail), steps=len(trail))
    entries: list[Entry] = []
    arrived: dict[str, str] = {}  # step -> when its latest work was stored
    fanouts: dict[str, Entry] = {}  # a fan-out's key -> its entry (one for all its items)
    ran: set[str] = set()
    taken: set[str] = set()
    goal, trace = "", ""
    last_report: TestReport | None = None
    for stored in trail:
        trace = trace or trace_id(stored.headers)
        env = stored.try_decode()
        time = stored.time or ""
        if env is None:
            entries.append(Entry(stored.seq, time, "other", "(undecodable message)"))
            continue
        apply_event(st, env)
        msg = env.message
        if isinstance(msg, TaskRequest):
            goal = msg.goal
            if workflow is not None:
                arrived[workflow.entry.id] = time
            entries.append(Entry(stored.seq, time, "task", "task submitted",
                                 agent=env.sender or "", summary=msg.goal))
        elif isinstance(msg, Work):
            target = topics.step_of_topic(env.topic) or ""
            if msg.source:
                ran.add(msg.source)
                if msg.edge:
                    taken.add(msg.edge)
                taken.update(msg.state.edges)
            fanned = fanouts.get(msg.item.fanout) if msg.item is not None else None
            if fanned is not None and msg.item is not None:  # a later item of a fan-out
                fanned.items.append(msg.item.key or str(msg.item.index))
                fanned.usage = fanned.usage or msg.usage
                continue
            if not msg.source or env.sender == "client":  # `retry` re-sent it: a new start
                arrived[target] = time
                continue
            report = msg.state.test_report
            new_report = report if report is not None and report != last_report else None
            last_report = report or last_report
            back = target if target in ran and not msg.edge.endswith((".next", ".join")) \
                else ""
            prov = msg.provenance
            value = msg.state.artifacts.get(msg.output)
            entry = Entry(
                stored.seq, time, "step", f"{msg.source} -> {target}", agent=env.sender or "",
                model=prov.name if prov is not None else "", usage=msg.usage,
                model_s=prov.latency_s if prov is not None else None,
                step_s=_seconds(arrived.get(msg.source), time), edge=msg.edge, send_back=back,
                summary=_summary(value) or describe(msg),
                findings=_findings(value) or (list(msg.state.findings) if back else []),
                diff=msg.state.diffs.get(msg.output, ""), report=new_report,
                joined=_joined(value) if msg.edge.endswith(".join") else [])
            if msg.item is not None:
                entry.total = msg.item.total
                entry.items.append(msg.item.key or str(msg.item.index))
                fanouts[msg.item.fanout] = entry
            entries.append(entry)
            arrived[target] = time
        elif isinstance(msg, TaskResult):
            if msg.step:
                ran.add(msg.step)
                taken |= _finish_edge(workflow, msg)
            prov = msg.provenance
            entries.append(Entry(
                stored.seq, time, "result", f"{msg.step or 'run'} -> result: {msg.status}",
                agent=env.sender or "", model=prov.name if prov is not None else "",
                usage=msg.usage, model_s=prov.latency_s if prov is not None else None,
                step_s=_seconds(arrived.get(msg.step), time), summary=msg.reason,
                findings=_findings(msg.artifacts.get(_output(workflow, msg.step)))
                or list(msg.findings),
                report=msg.test_report if msg.test_report != last_report else None))
        elif isinstance(msg, DeadLetter | Cancel | Resume):
            if isinstance(msg, Resume):
                arrived[msg.step] = time
            entries.append(Entry(stored.seq, time, type(msg).__name__.lower(), describe(msg),
                                 agent=env.sender or ""))
    now = (st.step or (workflow.entry.id if workflow is not None else "")) \
        if st.result is None else ""
    graph = mermaid(workflow, taken=taken, ran=ran, now=now) if workflow is not None else ""
    return RunView(workflow_id, st, workflow, graph, entries, goal, trace)
