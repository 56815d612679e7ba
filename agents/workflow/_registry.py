"""The workflows a process knows: its configured one, and any stored one by hash."""

from __future__ import annotations

import structlog

from swarmbus.bus import Bus, Reject, WorkflowStore
from swarmbus.protocols import CompiledWorkflow, TaskRequest, WorkflowError

from ._load import compile_workflow

__all__ = ["Workflows"]

log = structlog.get_logger("swarmbus.workflow")


class Workflows:
    """The process's workflows: ``default`` (what a task that names none follows,
    stored as the namespace's default when ``make_default``), and every workflow
    a message names by hash, read from the namespace's store and compiled once.

    One instance serves every step agent of a process (``setup`` is idempotent).
    """

    def __init__(self, default: CompiledWorkflow, *, make_default: bool = True) -> None:
        self.default = default
        self.make_default = make_default
        self._known: dict[str, CompiledWorkflow] = {default.hash: default}
        self._store: WorkflowStore | None = None

    async def setup(self, bus: Bus) -> None:
        if self._store is not None:
            return
        self._store = await WorkflowStore.open(bus)
        previous = await self._store.resolve(None)
        await self._store.put(self.default, default=self.make_default)
        if self.make_default and previous and previous != self.default.hash:
            old = await self._store.get(previous)
            log.warning("namespace default workflow changed", namespace=bus.namespace,
                        old=old.label if old else previous, new=self.default.label)

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
            compiled = compile_workflow(stored.spec, source=f"stored workflow {stored.label}")
        except WorkflowError as e:
            raise Reject(f"stored workflow {stored.label} does not load here: {e}") from None
        self._known[ref] = compiled
        return compiled

    async def for_task(self, task: TaskRequest, header: str | None) -> CompiledWorkflow:
        """The workflow a task follows: the ``Swarm-Workflow`` header, the task's
        ``workflow`` (a name or hash), else the namespace's default."""
        if header:
            return await self.get(header)
        if task.workflow is None:
            if self._store is not None and self.make_default is False:
                ref = await self._store.resolve(None)
                return await self.get(ref) if ref else self.default
            return self.default
        if task.workflow in (self.default.name, self.default.hash):
            return self.default
        ref = await self._store.resolve(task.workflow) if self._store is not None else None
        if ref is None:
            raise Reject(f"the task names workflow {task.workflow!r}, which this namespace "
                         "does not hold")
        return await self.get(ref)
