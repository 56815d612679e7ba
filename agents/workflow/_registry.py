"""The workflows a process knows: its configured one, and any stored one by hash."""

from __future__ import annotations

from dataclasses import replace

import structlog

from swarmbus.bus import Bus, Reject, WorkflowStore
from swarmbus.protocols import CompiledWorkflow, TaskRequest, WorkflowError

from ._load import compile_workflow

__all__ = ["Workflows"]

log = structlog.get_logger("swarmbus.workflow")


class Workflows:
    """The process's workflows: ``default`` (the one this process serves: every stored
    version of its name), and every workflow a message names by hash, read from the
    namespace's store and compiled once.

    ``make_default``: True makes ``default`` the namespace's default workflow (what a
    task that names none follows); None only when the namespace has none yet, or when
    the default is another version of the same workflow (an upgrade), so another
    workflow's default changes only when asked; False never. One instance serves every step
    agent of a process (``setup`` is idempotent).
    """

    def __init__(self, default: CompiledWorkflow, *, make_default: bool | None = None) -> None:
        self.default = default
        self.make_default = make_default
        self._known: dict[str, CompiledWorkflow] = {default.hash: default}
        self._store: WorkflowStore | None = None
        self.versions: list[CompiledWorkflow] = [default]
        """Every stored version of ``default``'s name (``default`` included), once set up."""

    async def setup(self, bus: Bus) -> None:
        if self._store is not None:
            return
        self._store = await WorkflowStore.open(bus)
        previous = await self._store.put(self.default, default=self.make_default)
        now = await self._store.resolve(None)
        if previous and previous != now and now == self.default.hash:
            old = await self._store.get(previous)
            log.warning("namespace default workflow changed", namespace=bus.namespace,
                        old=old.label if old else previous, new=self.default.label)
        elif now != self.default.hash:
            current = await self._store.get(now) if now else None
            log.info("this workflow is not the namespace's default: tasks that name none "
                     "follow the default (swarmbus up --make-default takes it over)",
                     namespace=bus.namespace, workflow=self.default.label,
                     default=current.label if current else now)
        stored = await self._store.versions(self.default.name)
        self.versions = [self.default, *(w for w in stored if w.hash != self.default.hash)]

    def serves(self, wf: CompiledWorkflow) -> bool:
        """Whether ``wf`` is a version of the workflow this process serves."""
        return wf.name == self.default.name

    async def get(self, ref: str | None) -> CompiledWorkflow:
        """The workflow with hash ``ref`` (None: the default). Raises ``Reject`` when
        the namespace does not hold it: the message cannot be worked on."""
        if not ref:
            return self.default
        known = self._known.get(ref)
        if known is not None:
            return known
        stored = await self._store.get(ref) if self._store is not None else None
        if stored is None:
            raise Reject(f"workflow {ref!r} is not stored in this namespace")
        try:
            compiled = replace(compile_workflow(stored.spec, source=f"stored workflow "
                                                f"{stored.label}"), stored_as=stored.hash)
        except WorkflowError as e:
            raise Reject(f"stored workflow {stored.label} does not load here: {e}") from None
        self._known[ref] = compiled
        return compiled

    async def graph(self, ref: str) -> CompiledWorkflow | None:
        """The stored workflow ``ref`` as a graph only (its types unresolved: what routing
        a message needs, without importing its code), or None."""
        known = self._known.get(ref)
        if known is not None:
            return known
        return await self._store.get(ref) if self._store is not None else None

    async def for_task(self, task: TaskRequest, header: str | None) -> CompiledWorkflow:
        """The workflow a task follows, as a graph (see ``graph``): the ``Swarm-Workflow``
        header, the task's ``workflow`` (a name or hash), else the namespace's default
        (as stored now). Raises ``Reject`` when the namespace does not hold it."""
        if task.workflow in (self.default.name, self.default.hash) and not header:
            return self.default
        if header:
            ref: str | None = header
        elif self._store is None:
            return self.default
        else:
            ref = await self._store.resolve(task.workflow)
            if ref is None and task.workflow is None:
                return self.default
        found = await self.graph(ref) if ref else None
        if found is None:
            named = task.workflow or header
            raise Reject(f"the task names workflow {named!r}, which this namespace "
                         "does not hold")
        return found
