"""Fan-out and join, as pure data: which items run when, and when the join fires.

A step with ``for_each`` runs once per item of a list; a step with ``join`` runs
once every item has finished. Which items are released (started) after which
completion, which are skipped (a dependency failed), and which completion
completes the set are a function of one thing only: the *order of completions*,
recorded with compare-and-set in a key-value bucket. Every process that replays
that order reaches the same answer, so whoever records completion ``p`` publishes
exactly what completion ``p`` released (with ids derived from the item), and
exactly one completion, the one that finished the set, publishes the join. A
duplicate or redelivered completion finds itself already in the order and
replays its own position; it cannot fire the join early, twice, or never.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field, JsonValue

from ._usage import Provenance, Usage, _Data

__all__ = [
    "FanoutPlan",
    "ItemResult",
    "Joined",
    "Progress",
    "WorkItem",
    "fanout_key",
    "item_msg_id",
    "join_msg_id",
]

_T = TypeVar("_T")


class WorkItem(_Data):
    """One item of a fan-out, on the work message that runs it (``Work.item``)."""

    fanout: str = Field(description="The fan-out's key: '<step>.r<round>s<steps>' (fanout_key).")
    index: int = Field(ge=0, description="Its place in the list (0-based).")
    total: int = Field(ge=1, description="How many items the fan-out has.")
    key: str = Field("", description="The item's name (its `name` field), else its index.")
    value: JsonValue = Field(None, description="The item itself.")


class ItemResult(BaseModel, Generic[_T]):
    """What one item came to: ``ok`` with the step's ``value``, or not (``reason``:
    the failure, or ``skipped: ...`` when a dependency failed). ``usage``: what the
    item's own calls cost."""

    index: int
    key: str = ""
    ok: bool
    value: _T | None = None
    reason: str = ""
    usage: Usage = Field(default_factory=Usage)
    provenance: Provenance | None = Field(None, description="The model that answered.")
    input: JsonValue = Field(None, description="The item it ran on.")
    reused: bool = Field(False, description="Taken from the round before (rerun: affected).")
    limit: str = Field("", description="The run's limit that stopped it (budget_exceeded): "
                       "the run ends so once every item has finished.")
    resumed_after: int = Field(0, description="The run's resumed_after when it ran: an item "
                               "run before a resume is in the resumed run's spend already.")


class Joined(BaseModel, Generic[_T]):
    """A fan-out's results in item order: what the join step (and every later step)
    sees under the fan-out step's output name (``{{ artifacts.parts.items }}``)."""

    items: list[ItemResult[_T]] = Field(default_factory=list)

    @property
    def ok(self) -> list[_T]:
        """The values of the items that succeeded, in item order."""
        return [r.value for r in self.items if r.ok and r.value is not None]


def fanout_key(step: str, round: int, steps: int) -> str:
    """The key of one fan-out of ``step``: the run's round and how many steps ran
    before it, so a second round of the same loop (or a resumed run) is a new set."""
    return f"{step}.r{round}s{steps}"


def item_msg_id(workflow_id: str, fanout: str, index: int, resumed_after: int = 0) -> str:
    """``Nats-Msg-Id`` of item ``index``'s work: the same whoever publishes it (a run
    resumed after the result at ``resumed_after`` publishes its items anew)."""
    if resumed_after:
        return _digest("item", workflow_id, fanout, str(index), str(resumed_after))
    return _digest("item", workflow_id, fanout, str(index))


def join_msg_id(workflow_id: str, fanout: str) -> str:
    """``Nats-Msg-Id`` of the join's work: the same whoever publishes it."""
    return _digest("join", workflow_id, fanout)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Progress:
    """A fan-out after its completions so far, replayed.

    ``released``: the items the *last* completion started (the first ones at
    position -1, the fan-out itself); ``skipped``: the items it skipped (a
    dependency of theirs failed); ``finished``: item -> ok, for every finished
    item; ``complete``: whether every item has finished; ``completed_at``: the
    position (0-based, in the completion order) whose completion finished the
    set, or None; ``running``: the items started and not finished."""

    released: list[int]
    skipped: list[int]
    finished: dict[int, bool]
    complete: bool
    completed_at: int | None
    running: list[int] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(1 for v in self.finished.values() if v)


@dataclass(frozen=True)
class FanoutPlan:
    """How ``n`` items run: at most ``max_parallel`` in flight (None: all), each after
    the items in its ``deps`` (indices) finished *ok*; an item whose dependency failed
    is skipped (it counts as finished, not ok). Items start in index order."""

    n: int
    deps: tuple[frozenset[int], ...] = ()
    max_parallel: int | None = None
    keys: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.deps:
            object.__setattr__(self, "deps", tuple(frozenset() for _ in range(self.n)))
        if not self.keys:
            object.__setattr__(self, "keys", tuple(str(i) for i in range(self.n)))

    @classmethod
    def of(cls, items: Sequence[Any], max_parallel: int | None = None,
           ) -> tuple[FanoutPlan, list[str]]:
        """The plan for ``items`` and the problems with them (empty: none). An item
        that is an object with a ``name`` is known by it; its ``depends_on`` (names
        of other items) orders the waves. Problems: two items of one name, a
        dependency on no item, a cycle of dependencies."""
        keys: list[str] = []
        problems: list[str] = []
        for i, item in enumerate(items):
            name = item.get("name") if isinstance(item, Mapping) else None
            keys.append(str(name) if isinstance(name, str) and name else str(i))
        index: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in index:
                problems.append(f"two items are named {k!r} (items {index[k]} and {i})")
            index.setdefault(k, i)
        deps: list[frozenset[int]] = []
        for i, item in enumerate(items):
            wanted = item.get("depends_on") if isinstance(item, Mapping) else None
            found: set[int] = set()
            for name in wanted if isinstance(wanted, list) else []:
                j = index.get(str(name))
                if j is None:
                    problems.append(f"item {keys[i]!r} depends on {name!r}, which is no item "
                                    f"(items: {', '.join(keys)})")
                elif j == i:
                    problems.append(f"item {keys[i]!r} depends on itself")
                else:
                    found.add(j)
            deps.append(frozenset(found))
        plan = cls(len(items), tuple(deps), max_parallel, tuple(keys))
        if not problems:
            cycle = plan.cycle()
            if cycle:
                problems.append("the items depend on each other in a cycle: "
                                + " -> ".join(keys[i] for i in cycle))
        return plan, problems

    def cycle(self) -> list[int]:
        """One cycle of dependencies (its items, the first repeated at the end), or []."""
        color: dict[int, int] = {}
        stack: list[int] = []

        def visit(i: int) -> list[int]:
            color[i] = 1
            stack.append(i)
            for j in sorted(self.deps[i]):
                if color.get(j) == 1:
                    return [*stack[stack.index(j):], j]
                if j not in color:
                    found = visit(j)
                    if found:
                        return found
            stack.pop()
            color[i] = 2
            return []

        for i in range(self.n):
            if i not in color:
                found = visit(i)
                if found:
                    return found
        return []

    def waves(self) -> list[list[int]]:
        """The items by wave: those with no dependency, then those whose dependencies
        are all in earlier waves, and so on (for display and the benchmark)."""
        wave_of: dict[int, int] = {}
        left = set(range(self.n))
        out: list[list[int]] = []
        while left:
            now = sorted(i for i in left if all(d in wave_of for d in self.deps[i]))
            if not now:  # a cycle: FanoutPlan.of reports it
                break
            for i in now:
                wave_of[i] = len(out)
            out.append(now)
            left -= set(now)
        return out

    def start(self) -> list[int]:
        """The items the fan-out itself starts."""
        return self.replay(()).released

    def replay(self, done: Sequence[tuple[int, bool]]) -> Progress:
        """Replay the completions ``done`` (item, ok), in the order they were recorded;
        a completion of an item already finished (a duplicate) changes nothing."""
        finished: dict[int, bool] = {}
        in_flight: set[int] = set()
        started: set[int] = set()
        completed_at: int | None = None

        def step() -> tuple[list[int], list[int]]:
            skipped: list[int] = []
            changed = True
            while changed:  # a skip can make another item's dependency fail
                changed = False
                for i in range(self.n):
                    if i not in finished and i not in started and any(
                            finished.get(d) is False for d in self.deps[i]):
                        finished[i] = False
                        skipped.append(i)
                        changed = True
            released: list[int] = []
            for i in range(self.n):
                if self.max_parallel is not None and len(in_flight) >= self.max_parallel:
                    break
                if i in started or i in finished:
                    continue
                if all(finished.get(d) is True for d in self.deps[i]):
                    started.add(i)
                    in_flight.add(i)
                    released.append(i)
            return released, skipped

        released, skipped = step()
        for p, (i, ok) in enumerate(done):
            if i in finished or not 0 <= i < self.n:
                released, skipped = [], []
                continue
            finished[i] = bool(ok)
            in_flight.discard(i)
            started.add(i)
            released, skipped = step()
            if completed_at is None and len(finished) == self.n:
                completed_at = p
        return Progress(released, skipped, finished, len(finished) == self.n, completed_at,
                        sorted(in_flight))
