"""Gemini explicit context caching: which prefix, when it pays, what it costs.

Gemini's implicit cache is free but promises nothing: a request that repeats an earlier
prefix may or may not be billed at the cached rate. An explicit cache
(``client.caches.create``, then ``cached_content=name`` on each request) guarantees the
cached rate, but costs its tokens at the input rate once, plus storage per token-hour
for its whole lifetime (``Price.cache_create_cost``). So ``GoogleModel`` creates one
only where the implicit cache was seen to fail and the prefix keeps coming back:

- The *stable prefix* of a request is its system prompt and the parts of its first
  (user) message up to the last one marked ``cache`` (only the system prompt when no
  part is marked and ``cache_system`` is set; none otherwise, or when nothing would be
  left to send after it). It is known by a SHA-256 of its exact text, the model and
  the account (base URL and API key), and estimated at ``CHARS_PER_TOKEN`` characters
  a token.
- Only prefixes of at least the model's explicit-caching minimum count
  (``explicit_min_tokens``), only models with a price that has
  ``cache_storage_per_hour`` and a cached rate below the input rate, and only with
  ``prompt_cache`` ``5m`` or ``1h`` (the cache lives 300 s or 3600 s).
- A request whose prefix was already answered once before, and whose reply's
  ``cachedContentTokenCount`` is below ``IMPLICIT_MISS_SHARE`` of the prefix, is an
  implicit miss. The next request with that prefix creates the cache and refers to it;
  later ones reuse it until its lifetime, less a margin, has passed. A first sighting
  never counts as a miss (nothing could have been cached yet: counting it would create
  a cache at every prefix's second request, before the implicit cache had its chance),
  so a prefix seen once never gets a cache, and neither does one whose repeats hit the
  implicit cache.
- A cache that expired after serving fewer requests than it needs to pay for itself
  (``pays_at``) is not made again for that prefix; one that paid is renewed by the
  next request. A create that fails is not tried again for that prefix.

All of it is per process (``REGISTRY``, at most ``REGISTRY_SIZE`` prefixes). How a
create is bounded by the budget and booked is ``GoogleModel``'s (its docstring).
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._base import ChatMessage, ModelRequest
from ._ledger import BYTES_PER_TOKEN_BOUND, CallBound
from ._prices import Price
from ._provider import CHARS_PER_TOKEN

__all__ = [
    "EXPLICIT_MIN_TOKENS",
    "IMPLICIT_MISS_SHARE",
    "PLAN",
    "REGISTRY",
    "TTL_S",
    "CacheRegistry",
    "Created",
    "Plan",
    "StablePrefix",
    "cache_gone",
    "create_bound",
    "create_cache",
    "explicit_min_tokens",
    "margin_s",
    "pays_at",
    "stable_prefix",
]

EXPLICIT_MIN_TOKENS: tuple[tuple[str, int], ...] = (
    ("gemini-2.5-flash-lite", 2048),
    ("gemini-2.5-flash", 1024),
    ("gemini-2.5-pro", 4096),
    ("gemini-3-flash", 1024),
    ("gemini-3-pro", 4096),
)
"""The fewest tokens an explicit cache may hold, by model name prefix (longest first).
https://ai.google.dev/gemini-api/docs/caching (English page, 2025-2026 copies): 2.5 Flash
1,024, 2.5 Pro 4,096, 3 Flash Preview 1,024, 3 Pro Preview 4,096 (a later Korean copy of
the page says 2,048 for both 2.5 models: the higher Pro figure is used, so that a create
is not refused). 2.5 Flash-Lite is not listed there; 2,048 is what the API itself states
when it refuses a smaller one ("min_total_token_count=2048", discuss.ai.google.dev thread
178942, which also shows 1,024 enforced for 2.5 Flash). A model not listed gets no
explicit cache."""

IMPLICIT_MISS_SHARE = 0.5
"""A repeat whose ``cachedContentTokenCount`` is below this share of its stable prefix
(estimated tokens) missed the implicit cache."""

TTL_S: dict[str, int] = {"5m": 300, "1h": 3600}
"""An explicit cache's lifetime (seconds), by ``prompt_cache``."""

MAX_MARGIN_S = 30.0
"""A cache is not referred to in the last ``min(MAX_MARGIN_S, a tenth of its lifetime)``
seconds of its life, so that no request reaches Google after it expired."""

REGISTRY_SIZE = 1024
"""Prefixes remembered per process (the least recently used are forgotten first)."""


def explicit_min_tokens(model: str) -> int | None:
    """The explicit-caching minimum of ``model`` (tokens), or None when unknown."""
    for prefix, tokens in EXPLICIT_MIN_TOKENS:
        if model.startswith(prefix):
            return tokens
    return None


def margin_s(lifetime_s: float) -> float:
    return min(MAX_MARGIN_S, lifetime_s / 10)


def pays_at(price: Price, ttl_s: float) -> int | None:
    """How many requests must read a cache of any size that lives ``ttl_s`` seconds for
    it to cost less than sending its tokens each time at the input rate: the smallest
    ``n`` with ``n * (input - cached) > input + storage * hours``. None when it never
    pays (no storage price, or no cached rate below the input rate)."""
    cached = price.input if price.cached_input is None else price.cached_input
    if price.cache_storage_per_hour is None or cached >= price.input:
        return None
    cost = price.input + price.cache_storage_per_hour * ttl_s / 3600
    return math.floor(cost / (price.input - cached)) + 1


@dataclass(frozen=True, slots=True)
class StablePrefix:
    """What an explicit cache would hold: ``system`` and ``parts`` (texts of the first
    message's leading parts); ``rest``: the first message after them; ``tokens``: an
    estimate of the prefix (``CHARS_PER_TOKEN``); ``key``: its SHA-256 (hex)."""

    key: str
    system: str
    parts: tuple[str, ...]
    rest: str
    tokens: int


def stable_prefix(request: ModelRequest[Any], history: Sequence[ChatMessage], *,
                  model: str, account: str) -> StablePrefix | None:
    """The stable prefix of a request (see the module's docstring), or None."""
    if not history or history[0].role != "user":
        return None
    first = history[0]
    marks = [i for i, p in enumerate(first.parts) if p.cache]
    if not marks and not request.cache_system:
        return None
    end = marks[-1] + 1 if marks else 0
    parts = tuple(p.text for p in first.parts[:end])
    rest = "".join(p.text for p in first.parts[end:]) if first.parts else first.content
    if not rest or not (request.system or parts):
        return None
    h = hashlib.sha256(b"swarmbus.gemini-cache/1\x00")
    for text in (account, model, request.system, *parts):
        data = text.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    chars = len(request.system) + sum(len(t) for t in parts)
    return StablePrefix(h.hexdigest(), request.system, parts, rest,
                        math.ceil(chars / CHARS_PER_TOKEN))


def create_bound(price: Price, prefix: StablePrefix, ttl_s: float) -> CallBound:
    """The most creating a cache of ``prefix`` can cost, for ``Ledger.before_call``: its
    tokens bounded as every input (``BYTES_PER_TOKEN_BOUND``), each at the input rate
    plus its storage for ``ttl_s``; no output."""
    size = len(prefix.system.encode()) + sum(len(t.encode()) for t in prefix.parts)
    rate = price.input + (price.cache_storage_per_hour or 0.0) * ttl_s / 3600
    flat = Price(input=rate, output=0.0)
    framing = 16  # role markers of the system instruction and the content, as a chat adds
    return CallBound(flat, math.ceil(size / BYTES_PER_TOKEN_BOUND) + framing, 0)


State = Literal["plain", "creating", "live", "failed", "unpaid"]


@dataclass(slots=True)
class _Entry:
    answered: int = 0  # requests sent without the explicit cache and answered
    missed: bool = False  # the last repeat missed the implicit cache
    state: State = "plain"
    name: str = ""
    expires: float = 0.0  # time.monotonic()
    uses: int = 0
    pays_at: int = 2


@dataclass(frozen=True, slots=True)
class Decision:
    """``use``: refer to the cache of that name; ``create``: create one now (then
    ``created`` / ``failed`` / ``skipped``); neither: send the request as it is, with
    ``repeat`` saying whether its prefix was answered before."""

    use: str = ""
    create: bool = False
    repeat: bool = False


class CacheRegistry:
    """What this process saw of each stable prefix (thread-safe, ``size`` prefixes)."""

    def __init__(self, size: int = REGISTRY_SIZE) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def _entry(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    def decide(self, key: str, now: float) -> Decision:
        with self._lock:
            e = self._entry(key)
            if e.state == "live":
                if now < e.expires:
                    return Decision(use=e.name)
                paid = e.uses >= e.pays_at
                e.state, e.missed, e.name, e.uses = ("plain" if paid else "unpaid"), paid, "", 0
            if e.state == "plain" and e.missed:
                e.state = "creating"
                return Decision(create=True)
            return Decision(repeat=e.answered > 0)

    def answered(self, key: str, *, repeat: bool, cached: int, tokens: int) -> None:
        """A request sent without the explicit cache was answered with ``cached`` tokens
        read from the implicit cache; ``tokens``: its stable prefix."""
        with self._lock:
            e = self._entry(key)
            if repeat:
                e.missed = cached < IMPLICIT_MISS_SHARE * tokens
            e.answered += 1

    def created(self, key: str, name: str, *, expires: float, pays_at: int) -> None:
        with self._lock:
            e = self._entry(key)
            e.state, e.name, e.expires, e.uses, e.pays_at = "live", name, expires, 0, pays_at

    def used(self, key: str) -> None:
        with self._lock:
            self._entry(key).uses += 1

    def failed(self, key: str) -> None:
        """A create failed, or the cache is gone: no explicit cache for this prefix."""
        with self._lock:
            e = self._entry(key)
            e.state, e.name = "failed", ""

    def skipped(self, key: str) -> None:
        """A create was not made (the budget, a limit): the next request may try."""
        with self._lock:
            e = self._entry(key)
            if e.state == "creating":
                e.state = "plain"


REGISTRY = CacheRegistry()
"""The process's registry, shared by every ``GoogleModel`` (caches are per account)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A call's explicit cache: ``name`` to refer to ("": none), for ``prefix``;
    ``repeat``: the prefix was answered before (so a miss is the implicit cache's)."""

    prefix: StablePrefix
    name: str = ""
    repeat: bool = False


PLAN: contextvars.ContextVar[Plan | None] = contextvars.ContextVar(
    "swarmbus_gemini_cache", default=None)
"""The plan of the call being made in this task (set around it by ``GoogleModel``)."""


@dataclass(frozen=True, slots=True)
class Created:
    """A created cache: ``name`` ("" if the reply had none), ``tokens`` (its
    ``totalTokenCount``; None: not reported), ``lifetime_s`` (the TTL asked, or less
    when Google's ``expireTime`` says so)."""

    name: str
    tokens: int | None
    lifetime_s: float


async def create_cache(client: Any, model: str, prefix: StablePrefix, ttl_s: int, *,
                       timeout_s: float) -> Created:
    """Create the cache of ``prefix`` through ``client`` (a ``google.genai.Client``):
    its system instruction and one user content of its parts. Raises what the SDK
    raises."""
    from google.genai import types as genai_types

    contents = [genai_types.Content(role="user", parts=[
        genai_types.Part(text=t) for t in prefix.parts])] if prefix.parts else None
    config = genai_types.CreateCachedContentConfig(
        system_instruction=prefix.system or None, contents=contents, ttl=f"{ttl_s}s",
        http_options=genai_types.HttpOptions(timeout=max(1, round(timeout_s * 1000))))
    cache = await client.aio.caches.create(model=model, config=config)
    usage = cache.usage_metadata
    lifetime = float(ttl_s)
    if cache.create_time is not None and cache.expire_time is not None:
        lifetime = min(lifetime, (cache.expire_time - cache.create_time).total_seconds())
    return Created(cache.name or "", usage.total_token_count if usage else None, lifetime)


def cache_gone(exc: Any) -> bool:
    """Whether a request that referred to a cache failed (a ``google.genai`` ``APIError``)
    because the cache is not there: 403, 404, or a 400 naming the cache."""
    return exc.code in (403, 404) or (exc.code == 400 and "cache" in str(exc.message).lower())
