"""The ledger: every model call made while handling one message, booked as it happens.

A ``Ledger`` is made current with ``metered(ledger)``; every model below it
(provider adapters, fallback chains, the response cache, offline models)
calls ``before_call`` before it calls a provider and ``record`` after every
answer a provider billed, whatever happens next (invalid or truncated output,
a refusal, a fallback moving on, a publish that fails). So the spend of a
step is the ledger's ``usage``, not the answer's, and a limit checked in
``before_call`` stops the *next* call, also inside a fallback chain or before
a repair attempt.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from swarmbus.protocols import Provenance, Usage

__all__ = ["Ledger", "current_ledger", "metered", "tapped"]

CallCheck = Callable[["Ledger", str], None]
"""Called with the ledger and the model name before every provider call; raises to stop."""


class Ledger:
    """The calls made under one ``metered`` block, in order.

    ``scope`` keys the response cache (the workflow id; empty: shared). ``check``
    runs before every provider call (budget, deadline, cancel). ``redelivery``
    marks a message delivered before: a cache hit then charges what the call
    that filled the cache cost, because the attempt that paid never got to
    publish its spend. ``carried`` is spend an earlier, failed delivery of the
    same message booked (it is part of ``usage``). Not thread-safe: one ledger
    per handler.
    """

    __slots__ = (
        "_booked", "_carry_taken", "_taken", "_total", "_usage", "carried", "check", "records",
        "redelivery", "scope", "spent_before", "stopped",
    )

    def __init__(
        self,
        *,
        scope: str = "",
        check: CallCheck | None = None,
        redelivery: bool = False,
        spent_before: Usage | None = None,
        carried: Usage | None = None,
    ) -> None:
        self.scope = scope
        self.check = check
        self.redelivery = redelivery
        self.spent_before = spent_before or Usage()
        """What the workflow spent before this ledger (for budget checks)."""
        self.carried = carried or Usage()
        self.records: list[Provenance] = []
        self._booked: list[Usage] = []  # what each record costs, in the same order
        self._usage = self.carried  # carried + every record: kept as records come in
        self._total: Usage | None = None
        self._taken = 0
        self._carry_taken = False
        self.stopped: BaseException | None = None
        """The exception ``check`` raised, if it stopped a call: a fallback chain lets
        exactly this exception through unchanged instead of moving on."""

    def before_call(self, model: str) -> None:
        """Run the check before a provider call to ``model`` (raises to stop the call).

        Whatever the check raises propagates unchanged (also through fallback
        chains and the response cache) and is kept in ``stopped``.
        """
        if self.check is not None:
            try:
                self.check(self, model)
            except BaseException as exc:
                self.stopped = exc
                raise

    def record(self, provenance: Provenance) -> None:
        """Book one provider answer (or one cache hit)."""
        if provenance.from_cache and self.redelivery and provenance.original_usage is not None:
            cost = provenance.original_usage + _ONE_HIT
        else:
            cost = provenance.usage()
        self.records.append(provenance)
        self._booked.append(cost)
        self._usage = self._usage + cost
        self._total = None

    @property
    def usage(self) -> Usage:
        """Everything booked here (``carried`` included); a redelivered cache hit
        carries its original cost."""
        return self._usage

    def take(self) -> Usage:
        """The usage not taken before (``carried`` with the first take): what a handler
        adds to the workflow's spend when it publishes, so nothing is added twice."""
        if not self._carry_taken:
            new = self._usage  # nothing taken yet: carried + every record
            self._carry_taken = True
        else:
            new = Usage.sum(self._booked[self._taken:])
        self._taken = len(self.records)
        return new

    @property
    def spent_usd(self) -> float:
        """USD of ``total``'s priced calls (``Usage.priced_cost_usd``), without building
        it (checked before every call)."""
        return self.spent_before.priced_cost_usd + self._usage.priced_cost_usd

    @property
    def total(self) -> Usage:
        """``spent_before`` plus this ledger's usage: what a budget is checked against."""
        if self._total is None:
            self._total = self.spent_before + self._usage
        return self._total

    @property
    def models(self) -> list[str]:
        """The models booked, in call order, without repeats."""
        return list(dict.fromkeys(p.name for p in self.records))


_ONE_HIT = Usage(cache_hits=1)

_current: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar(
    "swarmbus_ledger", default=None
)


def current_ledger() -> Ledger | None:
    """The ledger of the innermost ``metered`` block, if any."""
    return _current.get()


@contextmanager
def metered(ledger: Ledger) -> Iterator[Ledger]:
    """Book every model call made inside the block (in this task) into ``ledger``."""
    token = _current.set(ledger)
    try:
        yield ledger
    finally:
        _current.reset(token)


class _Tap(Ledger):
    """Books into ``parent`` (its check, its records) and keeps a copy of what it booked."""

    __slots__ = ("parent",)

    def __init__(self, parent: Ledger | None) -> None:
        super().__init__(
            scope=parent.scope if parent else "",
            redelivery=parent.redelivery if parent else False,
            spent_before=parent.total if parent else None,
        )
        self.parent = parent

    def before_call(self, model: str) -> None:
        if self.parent is None:
            return
        try:
            self.parent.before_call(model)
        except BaseException:
            self.stopped = self.parent.stopped
            raise

    def record(self, provenance: Provenance) -> None:
        if self.parent is not None:
            self.parent.record(provenance)
        super().record(provenance)


@contextmanager
def tapped() -> Iterator[Ledger]:
    """Inside: calls are booked into the current ledger (if any) as usual, and the
    ledger yielded holds a copy of them (e.g. what filling a cache entry cost)."""
    with metered(_Tap(current_ledger())) as tap:
        yield tap
