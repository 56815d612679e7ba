"""The ledger: every model call made while handling one message, booked as it happens.

A ``Ledger`` is made current with ``metered(ledger)``; every model below it
(provider adapters, fallback chains, the response cache, offline models)
calls ``before_call`` before it calls a provider and ``book`` (or ``record``)
after every answer a provider billed, whatever happens next (invalid or
truncated output, a refusal, a fallback moving on, a publish that fails). So
the spend of a step is the ledger's ``usage``, not the answer's, and a limit
checked in ``before_call`` stops the *next* call, also inside a fallback chain
or before a repair attempt.

Money limits are the ledger's own: with ``budget_usd`` a call is not made once
the budget is spent, and a call whose worst case (``CallBound``: its input at
most, plus ``max_tokens`` of output, at the model's prices) does not fit in
what is left is made with fewer output tokens, or not at all.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmbus.bus import model_call
from swarmbus.protocols import ControlFlow, Provenance, TaskStatus, Usage

from ._prices import Price

if TYPE_CHECKING:
    from ._base import ChatMessage, ModelRequest

__all__ = [
    "BYTES_PER_TOKEN_BOUND",
    "MIN_OUTPUT_TOKENS",
    "CallBound",
    "Ledger",
    "LimitReached",
    "current_ledger",
    "input_token_bound",
    "metered",
    "tapped",
]

log = logging.getLogger("swarmbus.models")

CallCheck = Callable[["Ledger", str], None]
"""Called with the ledger and the model name before every provider call; raises to stop."""

Persist = Callable[[Usage], Awaitable[None]]
"""Stores a ledger's whole usage so far (carried included) where a later delivery of
the same message finds it."""

MIN_OUTPUT_TOKENS = 256
"""A call is not made when the budget left cannot pay for this many output tokens (or
its ``max_tokens``, when smaller) on top of its input."""

BYTES_PER_TOKEN_BOUND = 2
"""The budget bounds a request's input at one token per 2 bytes of UTF-8 (plus a few
per message): tokenizers average 3 to 4 characters of English or code per token, and
a CJK character (3 bytes) is one or two tokens, so this is above the real count for
ordinary text. The output bound is exact: a provider never writes more than
``max_tokens``."""

_TOKENS_PER_MESSAGE = 8  # role markers and framing a chat format adds per message


class LimitReached(ControlFlow):
    """A limit stopped the run: the workflow ends with ``status`` (``budget_exceeded``,
    ``deadline_exceeded``, ``cancelled``) and ``reason``."""

    def __init__(self, status: TaskStatus, reason: str) -> None:
        super().__init__(reason)
        self.status: TaskStatus = status
        self.reason = reason


def input_token_bound(request: ModelRequest[Any], history: tuple[ChatMessage, ...] | list[
        ChatMessage] | None = None) -> int:
    """An upper bound of the input tokens of ``request`` (its system prompt, messages,
    or ``history`` when given, and output schema): see ``BYTES_PER_TOKEN_BOUND``."""
    from ._base import schema_text

    messages = request.messages if history is None else history
    schema = schema_text(request.output_type)  # type: ignore[arg-type]  # a type hashes
    size = _utf8_len(request.system) + _utf8_len(schema)
    size += sum(_utf8_len(m.content) for m in messages)
    return math.ceil(size / BYTES_PER_TOKEN_BOUND) + _TOKENS_PER_MESSAGE * (len(messages) + 1)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())  # isascii: no copy, O(1)


@dataclass(frozen=True, slots=True)
class CallBound:
    """The most one call can cost, known before it is made: ``input_tokens`` (a bound,
    see ``input_token_bound``) and ``max_tokens`` of output at ``price`` (USD per
    million tokens; None: the model is unpriced and its cost has no bound)."""

    price: Price | None
    input_tokens: int
    max_tokens: int

    def input_usd(self) -> float:
        """USD of the input at most (every input token at the dearest input rate)."""
        if self.price is None:
            return 0.0
        p = self.price
        rate = max(p.input, p.cache_write or 0.0, p.cache_write_1h or 0.0)
        return self.input_tokens * rate / 1_000_000

    def worst_usd(self, max_tokens: int | None = None) -> float | None:
        """USD of the call at most, with ``max_tokens`` (default: its own) of output."""
        if self.price is None:
            return None
        out = self.max_tokens if max_tokens is None else max_tokens
        return self.input_usd() + out * self.price.output / 1_000_000

    def affordable(self, left_usd: float) -> int | None:
        """The output tokens (at most ``max_tokens``) whose worst case fits in ``left_usd``
        after the input; None when unpriced (no bound)."""
        if self.price is None:
            return None
        left = left_usd - self.input_usd()
        if left < 0:
            return 0
        if self.price.output <= 0:
            return self.max_tokens
        return min(self.max_tokens, math.floor(left * 1_000_000 / self.price.output))


class Ledger:
    """The calls made under one ``metered`` block, in order.

    ``scope`` keys the response cache (the workflow id; empty: shared). ``check``
    runs before every provider call (deadline, cancel). ``budget_usd`` (None: no
    budget) bounds ``spent_usd``: ``before_call`` raises ``LimitReached`` when it is
    spent or when even ``MIN_OUTPUT_TOKENS`` of output cannot fit, and lowers a
    call's ``max_tokens`` to fit what is left. ``redelivery`` marks a message
    delivered before: a cache hit then charges what the call that filled the cache
    cost, because the attempt that paid never got to publish its spend.
    ``carried`` is spend an earlier delivery of the same message booked (it is part
    of ``usage``). ``persist``, when given, is awaited by ``book`` with the whole
    usage after every call that cost money (or whose cost is unknown), so a delivery
    that dies right after a paid call still leaves it to the next one. Not
    thread-safe: one ledger per handler.
    """

    __slots__ = (
        "_booked", "_carry_taken", "_taken", "_total", "_usage", "budget_usd", "carried",
        "check", "persist", "records", "redelivery", "scope", "share", "spent_before",
        "stopped",
    )

    def __init__(
        self,
        *,
        scope: str = "",
        check: CallCheck | None = None,
        redelivery: bool = False,
        spent_before: Usage | None = None,
        carried: Usage | None = None,
        budget_usd: float | None = None,
        persist: Persist | None = None,
    ) -> None:
        self.scope = scope
        self.check = check
        self.redelivery = redelivery
        self.budget_usd = budget_usd
        self.persist = persist
        self.spent_before = spent_before or Usage()
        """What the workflow spent before this ledger (for budget checks); a fan-out's
        item adds what its siblings booked so far (``see_spent``)."""
        self.share = 1
        """How many ledgers may spend what is left at once (the items a fan-out runs in
        parallel): one call's worst case is fitted to ``left / share``, so calls in
        flight at once never add up to more than is left."""
        self.carried = carried or Usage()
        self.records: list[Provenance] = []
        self._booked: list[Usage] = []  # what each record costs, in the same order
        self._usage = self.carried  # carried + every record: kept as records come in
        self._total: Usage | None = None
        self._taken = 0
        self._carry_taken = False
        self.stopped: BaseException | None = None
        """The exception ``before_call`` raised, if it stopped a call: a fallback chain
        lets exactly this exception through unchanged instead of moving on."""

    def before_call(self, model: str, bound: CallBound | None = None) -> int | None:
        """Run the checks before a provider call to ``model`` (raises to stop it).

        ``check`` first, then the budget: ``LimitReached("budget_exceeded")`` when it is
        spent, or when ``bound`` (the call's worst case) cannot fit even
        ``MIN_OUTPUT_TOKENS`` of output in what is left. Returns the ``max_tokens`` the
        call must use to fit (fewer than ``bound.max_tokens``), or None to leave it.
        Whatever is raised propagates unchanged (also through fallback chains and the
        response cache) and is kept in ``stopped``.
        """
        try:
            if self.check is not None:
                self.check(self, model)
            return self._fit(model, bound)
        except BaseException as exc:
            self.stopped = exc
            raise

    def _fit(self, model: str, bound: CallBound | None) -> int | None:
        if self.budget_usd is None:
            return None
        spent = self.spent_usd
        left = self.budget_usd - spent
        if left <= 0:
            unknown = self.total.unpriced_calls
            extra = f" ({unknown} unpriced calls not counted)" if unknown else ""
            raise LimitReached(
                "budget_exceeded", f"spent ${spent:.4f} of ${self.budget_usd:.4f}{extra}"
                + (f"; stopped before calling {model}" if model else ""))
        if bound is None:
            return None
        left /= max(self.share, 1)
        fits = bound.affordable(left)
        if fits is None or (fits >= bound.max_tokens and bound.input_usd() <= left):
            return None
        # A call without output (an explicit cache's create, max_tokens 0) must fit too.
        if fits < min(MIN_OUTPUT_TOKENS, bound.max_tokens) or bound.input_usd() > left:
            worst = bound.worst_usd(min(MIN_OUTPUT_TOKENS, bound.max_tokens)) or 0.0
            raise LimitReached(
                "budget_exceeded",
                f"${left:.4f} of ${self.budget_usd:.4f} left"
                + (f" (this item's share: {self.share} run in parallel)" if self.share > 1
                   else "") + f"; a call to {model} with "
                f"{bound.input_tokens:,} input tokens at most could cost ${worst:.4f} before "
                f"writing {min(MIN_OUTPUT_TOKENS, bound.max_tokens)} tokens: not made")
        return fits

    def record(self, provenance: Provenance) -> None:
        """Book one provider answer (or one cache hit), and count it in the metrics
        (``model_call``: tokens, duration, cost; a cache hit counts nothing)."""
        self._add(provenance)
        model_call(provenance)

    def _add(self, provenance: Provenance) -> None:
        if provenance.from_cache and self.redelivery and provenance.original_usage is not None:
            cost = provenance.original_usage + _ONE_HIT
        else:
            cost = provenance.usage()
        self.records.append(provenance)
        self._booked.append(cost)
        self._usage = self._usage + cost
        self._total = None

    async def book(self, provenance: Provenance) -> None:
        """``record``, then ``persist`` the whole usage when this answer cost money or its
        cost is unknown. A failing ``persist`` is logged, never raised (the call is
        booked here either way)."""
        self.record(provenance)
        cost = self._booked[-1]
        if self.persist is None or not (cost.priced_cost_usd > 0 or cost.unpriced_calls):
            return
        try:
            await self.persist(self._usage)
        except Exception as exc:
            log.warning("could not store the spend for a later delivery: %r", exc)

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

    def see_spent(self, before: Usage) -> None:
        """Replace ``spent_before`` (the next check uses it)."""
        self.spent_before = before
        self._total = None

    @property
    def spent_usd(self) -> float:
        """USD of ``total``'s priced calls (``Usage.priced_cost_usd``), without building
        it (checked before every call)."""
        return self.spent_before.priced_cost_usd + self._usage.priced_cost_usd

    @property
    def left_usd(self) -> float | None:
        """What is left of ``budget_usd`` (None: no budget)."""
        return None if self.budget_usd is None else self.budget_usd - self.spent_usd

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
    """Books into ``parent`` (its checks, its records) and keeps a copy of what it booked."""

    __slots__ = ("parent",)

    def __init__(self, parent: Ledger | None) -> None:
        super().__init__(
            scope=parent.scope if parent else "",
            redelivery=parent.redelivery if parent else False,
            spent_before=parent.total if parent else None,
        )
        self.parent = parent

    def before_call(self, model: str, bound: CallBound | None = None) -> int | None:
        if self.parent is None:
            return None
        try:
            return self.parent.before_call(model, bound)
        except BaseException:
            self.stopped = self.parent.stopped
            raise

    def record(self, provenance: Provenance) -> None:
        if self.parent is not None:
            self.parent.record(provenance)  # counted there
        else:
            model_call(provenance)
        self._add(provenance)

    async def book(self, provenance: Provenance) -> None:
        if self.parent is not None:
            await self.parent.book(provenance)
        else:
            model_call(provenance)
        self._add(provenance)


@contextmanager
def tapped() -> Iterator[Ledger]:
    """Inside: calls are booked into the current ledger (if any) as usual, and the
    ledger yielded holds a copy of them (e.g. what filling a cache entry cost)."""
    with metered(_Tap(current_ledger())) as tap:
        yield tap
