"""Compiled workflows stored in the namespace's key-value bucket, by content hash.

Every work message names its workflow's hash (header ``Swarm-Workflow``), so
any process (an agent after an upgrade, ``swarmbus status``) reads the graph a
run started with. ``name.<name>`` points at a name's latest hash, ``default`` at
the namespace's default workflow (the one a task that names none follows).
"""

from __future__ import annotations

import re
import time

from pydantic import ValidationError

from swarmbus.protocols import CompiledWorkflow, ConfigError, Workflow

from ._bus import Bus
from ._kv import KeyValueStore

__all__ = ["WORKFLOWS_BUCKET", "UnknownWorkflowError", "WorkflowStore"]

WORKFLOWS_BUCKET = "workflows"
RESOLVE_TTL_S = 5.0
"""How long a process keeps what a workflow name (or the default) stands for (seconds):
a changed default reaches a client submitting many tasks within this."""
_HASH = re.compile(r"^[0-9a-f]{16}$")


class UnknownWorkflowError(ConfigError, LookupError):
    """A workflow name or hash that the namespace has not stored."""


class WorkflowStore:
    """Read and write compiled workflows (``await WorkflowStore.open(bus)``).

    Entries are immutable (the key is the content hash), so reads are cached
    in this process. The bucket keeps them as long as the stream keeps messages.
    """

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self._cache: dict[str, CompiledWorkflow] = {}
        self._resolved: dict[str, tuple[str | None, float]] = {}

    @classmethod
    async def open(cls, bus: Bus) -> WorkflowStore:
        ttl = bus.stream.max_age_s or None
        return cls(await bus.key_value(WORKFLOWS_BUCKET, ttl_s=ttl))

    @classmethod
    async def find(cls, bus: Bus) -> WorkflowStore | None:
        """The store if a daemon made it (None: none has run in the namespace yet)."""
        store = await bus.find_key_value(WORKFLOWS_BUCKET)
        return cls(store) if store is not None else None

    async def put(self, wf: CompiledWorkflow, *, default: bool | None = False) -> str | None:
        """Store ``wf`` under its hash and make it its name's latest. ``default``: True
        makes it the namespace's default workflow; None only when the namespace has
        none yet, or when the default is another version of ``wf``'s workflow (an
        upgrade: the same name, a changed file); False never. Returns the default's
        hash before this call (None: there was none)."""
        await self._store.put(wf.hash, wf.to_json().encode())
        await self._store.put(f"name.{wf.name}", wf.hash.encode())
        self._resolved.clear()
        previous = await self.resolve(None)
        upgrade = False
        if default is None and previous is not None and previous != wf.hash:
            current = await self.get(previous)
            upgrade = current is not None and current.name == wf.name
        if default or upgrade or (default is None and previous is None):
            await self._store.put("default", wf.hash.encode())
            self._resolved.clear()
        self._cache[wf.hash] = wf
        return previous

    async def versions(self, name: str) -> list[CompiledWorkflow]:
        """Every stored workflow named ``name`` (each version a daemon ever ran, while
        the bucket keeps it: as long as the stream keeps messages)."""
        out = []
        for key in await self._store.keys():
            if _HASH.match(key):
                wf = await self.get(key)
                if wf is not None and wf.name == name:
                    out.append(wf)
        return out

    async def get(self, workflow_hash: str) -> CompiledWorkflow | None:
        """The workflow stored under ``workflow_hash`` (types unresolved), or None."""
        cached = self._cache.get(workflow_hash)
        if cached is not None:
            return cached
        if not _HASH.match(workflow_hash):
            return None
        raw = await self._store.get(workflow_hash)
        if raw is None:
            return None
        try:
            # Its identity is the key it is stored under, whichever version wrote it.
            wf = CompiledWorkflow(Workflow.model_validate_json(raw), stored_as=workflow_hash)
        except ValidationError:
            return None  # written by a newer version we cannot read
        self._cache[workflow_hash] = wf
        return wf

    async def resolve(self, ref: str | None) -> str | None:
        """The hash ``ref`` (a hash, a name, or None for the default) stands for. What a
        name or the default stands for is read again after ``RESOLVE_TTL_S``."""
        if ref and _HASH.match(ref) and await self.get(ref) is not None:
            return ref
        if ref and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", ref):
            return None
        key = f"name.{ref}" if ref else "default"
        known = self._resolved.get(key)
        if known is not None and time.monotonic() - known[1] < RESOLVE_TTL_S:
            return known[0]
        raw = await self._store.get(key)
        found = raw.decode() if raw else None
        self._resolved[key] = (found, time.monotonic())
        return found

    async def of_run(self, ref: str | None, named: str | None = None) -> CompiledWorkflow | None:
        """The workflow a run follows, read from one of its messages: ``ref``, the hash
        that message carries (its ``Swarm-Workflow`` header, a work state's ``workflow``),
        when it has one; else the workflow its task names (``named``: the task's
        ``workflow``, a name or hash); else the namespace's default. A run that has only
        its task (no work yet) follows what the task names, as its entry agent does.
        None when the namespace does not hold that workflow."""
        found = ref or await self.resolve(named or None)
        return await self.get(found) if found else None

    async def names(self) -> dict[str, str]:
        """Stored workflow names -> their latest hash."""
        out: dict[str, str] = {}
        for key in await self._store.keys():
            if key.startswith("name."):
                raw = await self._store.get(key)
                if raw:
                    out[key[5:]] = raw.decode()
        return out
