"""What ``swarmbus ui`` knows of a namespace, read from NATS and never written: the runs
(``Viewer``, kept from the stream by one ordered consumer that starts at its first
message, so runs that ended before the page started are there too), who is live (the
agents' announcements, read every ``LIVE_POLL_S``) and the stored workflows. The page
itself is ``_ui_app``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
import anyio.abc
import nats.errors
import nats.js.errors
from nats.js import api

from swarmbus.bus import (
    Bus,
    StoredMessage,
    SwarmClient,
    WorkflowStatus,
    WorkflowStore,
    live_agents,
    serves,
)
from swarmbus.protocols import (
    AgentAnnouncement,
    CompiledWorkflow,
    ConfigError,
    Subject,
    SubjectError,
    TaskRequest,
    TaskResult,
    Work,
    check_workflow_id,
    namespace_filter,
    stream_name,
)

from ._view import RunRow, RunView, run_view

__all__ = ["LIST_LIMIT", "LIVE_POLL_S", "Listed", "Viewer", "open_namespace"]

LIST_LIMIT = 200
"""The list shows the newest runs that match its filter, up to this many."""
LIVE_POLL_S = 5.0
"""How often the live agents are read again (an agent's announcement lives 20 s)."""


async def open_namespace(client: SwarmClient) -> None:
    """Check that the namespace's stream exists, without making it (the viewer reads,
    never writes). Raises ``ConfigError`` naming the namespaces the server has."""
    bus = client.bus
    try:
        await bus.js.stream_info(bus.stream_name)
    except nats.js.errors.NotFoundError:
        names = await bus.js.streams_info()
        prefix = stream_name("x")[:-1]
        held = sorted(s.config.name[len(prefix):].lower() for s in names
                      if s.config.name and s.config.name.startswith(prefix))
        raise ConfigError(
            f"namespace {bus.namespace!r} has no stream on this NATS server (nothing ran in "
            f"it yet: start `swarmbus up` there first); it has "
            f"{', '.join(held) if held else 'no swarmbus namespace'}") from None


@dataclass(frozen=True, slots=True)
class Listed:
    """One row of the list: the run, its workflow's name ('' when not stored), the step
    waiting or running now, and whom it waits for ('' when someone serves it)."""

    row: RunRow
    workflow: str
    step: str
    waiting_for: str

    @property
    def word(self) -> str:
        return "waiting" if self.row.word == "running" and self.waiting_for else self.row.word


class Viewer:
    """The namespace's runs, kept from the stream by ``watch``; ``version`` grows with
    every change (a message, or who is live), and ``changed`` waits for it."""

    def __init__(self, client: SwarmClient, *, trace_url: str = "") -> None:
        self.client = client
        self.trace_url = trace_url
        self.rows: dict[str, RunRow] = {}
        self.version = 0
        self.live: list[AgentAnnouncement] | None = None
        """The agents announced at the last poll (None: not read yet)."""
        self.live_version = 0
        self._changed = anyio.Event()
        self.caught_up = anyio.Event()
        """Set once the messages stored before ``watch`` started are read."""
        self._store: WorkflowStore | None = None
        self._workflows: dict[str, CompiledWorkflow] = {}

    @property
    def bus(self) -> Bus:
        return self.client.bus

    def _bump(self) -> None:
        self.version += 1
        event, self._changed = self._changed, anyio.Event()
        event.set()

    def apply(self, stored: StoredMessage) -> None:
        """Fold one stored message in. A run is what has a task, work or a result; other
        messages on a run's subjects (your own agents' topics) make no run of their own."""
        try:
            wf = Subject.parse(stored.subject).workflow_id
        except SubjectError:
            return
        env = stored.try_decode()
        row = self.rows.get(wf)
        if row is None:
            if env is None or not isinstance(env.message, TaskRequest | Work | TaskResult):
                return
            row = self.rows[wf] = RunRow(WorkflowStatus(wf, known=True))
        row.apply(stored, env)
        self._bump()

    async def changed(self, seen: int, *, timeout_s: float | None = None) -> int:
        """Wait until ``version`` is past ``seen`` (or ``timeout_s``); returns it."""
        with anyio.move_on_after(timeout_s):
            while self.version <= seen:
                await self._changed.wait()
        return self.version

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None]
                    = anyio.TASK_STATUS_IGNORED) -> None:
        """Read the namespace's messages, first to last, then new ones as they come, and
        the live agents every ``LIVE_POLL_S``."""
        bus = self.bus
        info = await bus.js.stream_info(bus.stream_name)
        if info.state.messages == 0:
            self.caught_up.set()
        sub = await bus.js.subscribe(
            namespace_filter(bus.namespace), stream=bus.stream_name, ordered_consumer=True,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
            idle_heartbeat=5.0)
        with contextlib.suppress(nats.errors.Error, OSError):
            self.live = await self._read_live()  # known before the first page
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._poll_live)
                task_status.started()
                async for msg in sub.messages:
                    meta = msg.metadata
                    stamp = getattr(meta, "timestamp", None)
                    self.apply(StoredMessage(
                        meta.sequence.stream if meta.sequence else 0, msg.subject, msg.data,
                        dict(msg.headers or {}),
                        stamp.isoformat() if stamp is not None else None))
                    if not meta.num_pending:
                        self.caught_up.set()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()

    async def _poll_live(self) -> None:
        while True:
            await anyio.sleep(LIVE_POLL_S)
            with contextlib.suppress(nats.errors.Error, OSError):
                live = await self._read_live()
                if live != self.live:
                    self.live, self.live_version = live, self.live_version + 1
                    self._bump()

    async def _read_live(self) -> list[AgentAnnouncement]:
        """The live agents, without the counts that change with every message."""
        return [a.model_copy(update={"in_flight": 0, "handled": 0})
                for a in await live_agents(self.bus, make=False)]

    def waiting_for(self, st: WorkflowStatus, wf: CompiledWorkflow | None) -> str:
        """The role a running run waits for when no live agent serves its step (as
        ``SwarmClient.describe`` reads it, from the last poll), else ''."""
        step = wf.steps.get(st.step or wf.entry.id) if wf is not None else None
        if step is None or st.result is not None or self.live is None or wf is None:
            return ""
        return "" if serves(self.live, step.role, wf.consumer(step.role)) else step.role

    async def workflow(self, run: RunRow | WorkflowStatus) -> CompiledWorkflow | None:
        """The stored workflow a run follows (``WorkflowStore.of_run``: the hash its
        messages or its result carry, else what its task names). None when none is
        stored (the graph is then left out)."""
        st = run.status if isinstance(run, RunRow) else run
        ref = st.workflow or (st.result.workflow if st.result is not None else "")
        if ref in self._workflows:
            return self._workflows[ref]
        if self._store is None:
            self._store = await WorkflowStore.find(self.bus)
            if self._store is None:
                return None  # no daemon stored any yet: asked again later
        found = await self._store.of_run(ref or None, st.task_workflow)
        if found is not None and ref:
            self._workflows[ref] = found
        return found

    async def listed(self, *, q: str = "", status: str = "") -> list[Listed]:
        """The newest ``LIST_LIMIT`` runs whose id or goal holds ``q`` and whose status is
        ``status`` (both optional), newest first."""
        rows: Iterable[RunRow] = sorted(
            self.rows.values(), key=lambda r: (r.started, r.status.workflow_id), reverse=True)
        out: list[Listed] = []
        needle = q.strip().lower()
        for row in rows:
            if needle and needle not in row.status.workflow_id.lower() \
                    and needle not in row.goal.lower():
                continue
            wf = await self.workflow(row)
            st = row.status
            step = st.step or (wf.entry.id if wf is not None else "")
            item = Listed(row, wf.name if wf is not None else "",
                          step if st.result is None else "", self.waiting_for(st, wf))
            if status and item.word != status:
                continue
            out.append(item)
            if len(out) == LIST_LIMIT:
                break
        return out

    async def view(self, workflow_id: str) -> RunView | None:
        """One run as its page shows it (None: no such run in the stream)."""
        try:
            check_workflow_id(workflow_id)
        except SubjectError:
            return None
        row = self.rows.get(workflow_id)
        trail = await self.client.trail(workflow_id)
        if not trail:
            return None
        view = run_view(workflow_id, trail, None)
        wf = await self.workflow(row if row is not None else view.status)
        if wf is not None:
            view = run_view(workflow_id, trail, wf)
        with contextlib.suppress(nats.errors.Error):
            await self.client.describe(  # who serves its step, stalled
                view.status, agents=self.live if self.live is not None else
                await live_agents(self.bus, make=False))
        return view

