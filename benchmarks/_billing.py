"""Loopback fakes that bill like the vendors: usage reported the way each vendor reports
it, with cached input only where that vendor's prompt cache would serve it.

The HTTP side is ``tests/_vendor_fakes.py`` (its ``FakeServer`` and body builders, the
same ones the adapter tests check against the real SDKs). This module adds the meter:

- **Tokens.** A request's input is the text a vendor's model reads, in the order the
  vendors document for their prompt caches: the output schema first (OpenAI: "the
  structured output schema serves as a prefix to the system message", prompt-caching
  guide; Anthropic renders tools, system, messages in that order, and a request that
  changes only its output schema is reported to miss Claude's cache (AWS re:Post,
  "Does Bedrock include outputConfig in its prompt caching key?"); Gemini's order is
  not documented and is taken to be the same), then the system prompt, then each
  message's text (``cost.py --schema-last`` keeps the schema out of every prefix). One
  token per 4 bytes of that text (``BYTES_PER_TOKEN``; OpenAI's and Google's rule of
  thumb), a whole request rounded up, a prefix rounded down. JSON framing, role
  markers and the ``prompt_cache_key`` are not counted. Output: one token per 4
  characters of the reply, rounded up.
- **What a cache serves.** Only a prefix of the request that an earlier request of the
  same ``Meter`` sent (one meter per vendor per task: nothing is carried between
  tasks), and only as far as each vendor's rules let it:

  * OpenAI (https://platform.openai.com/docs/guides/prompt-caching): automatic, for
    any repeated prefix of at least 1,024 tokens, counted in 128-token increments
    (``cached_tokens`` is 1,024 + 128 n). Every request is taken to reach the machine
    that holds the prefix; ``prompt_cache_key`` only raises the odds of that, so its
    effect cannot be measured offline.
  * Gemini 2.5 Pro (https://ai.google.dev/gemini-api/docs/caching, implicit caching):
    any repeated prefix of at least 2,048 tokens, reported as
    ``cachedContentTokenCount``; nothing to send, nothing extra to pay.
  * Anthropic, Claude Sonnet 4.5
    (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching): only at
    ``cache_control`` breakpoints. A request reads the longest prefix ending at one of
    its content-block boundaries (at or before its last breakpoint) that an earlier
    request *wrote* at one of its breakpoints, if that entry is alive (5 minutes, or 1
    hour with ``"ttl": "1h"``, from its last write or read). It writes from the end of
    what it read up to its last breakpoint, if that prefix is at least 1,024 tokens
    (the minimum for Sonnet 4.5), split by the breakpoints' TTLs in
    ``cache_creation``; each breakpoint whose prefix reaches the minimum becomes an
    entry. A request without ``cache_control`` reads and writes nothing. On the wire
    ``input_tokens`` excludes cache reads and writes.

Every request's bill is also kept in USD from ``agents/models/prices.json`` (read here,
not through swarmbus), so a run's total can be checked against what swarmbus booked.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/ is not a package: its fakes by path

from _vendor_fakes import (  # noqa: E402
    Seen,
    anthropic_body,
    gemini_body,
    openai_body,
)

__all__ = ["BYTES_PER_TOKEN", "MIN_PREFIX", "PRICES", "Bill", "Block", "Meter", "Prompt",
           "output_name", "prompt_of"]

BYTES_PER_TOKEN = 4
MIN_PREFIX = {"openai": 1024, "google": 2048, "anthropic": 1024}
"""The shortest prefix (tokens) each vendor caches, for gpt-4o, Gemini 2.5 Pro and Claude
Sonnet 4.5 (the vendors' prompt-caching pages)."""
OPENAI_INCREMENT = 128
TTL_S = {"5m": 300.0, "1h": 3600.0}
PRICES: dict[str, dict[str, Any]] = json.loads(
    (ROOT / "agents" / "models" / "prices.json").read_text())["models"]


def tokens(n_bytes: int) -> int:
    """Whole tokens in a prefix of ``n_bytes`` bytes."""
    return n_bytes // BYTES_PER_TOKEN


@dataclass(frozen=True)
class Block:
    """One piece of a request's text; ``ttl`` (e.g. ``"5m"``) when it ends at an
    Anthropic breakpoint (it carries ``cache_control``)."""

    text: str
    ttl: str | None = None


@dataclass(frozen=True)
class Prompt:
    """A request as the model reads it: the output schema, then ``blocks`` (the system
    prompt, then each message, each content block its own); with ``schema_first``
    False, the schema comes last (outside every cached prefix: a what-if)."""

    schema: str
    blocks: tuple[Block, ...]
    schema_first: bool = True

    def data(self) -> bytes:
        text = "".join(b.text for b in self.blocks)
        return (self.schema + text if self.schema_first else text + self.schema).encode()

    def ends(self) -> list[tuple[int, str | None]]:
        """Each block's end as a byte offset into ``data()``, with its breakpoint TTL."""
        at = len(self.schema.encode()) if self.schema_first else 0
        out = []
        for b in self.blocks:
            at += len(b.text.encode())
            out.append((at, b.ttl))
        return out


def _blocks(content: Any) -> list[Block]:
    """A system prompt or message content: a string, or a list of content blocks."""
    if isinstance(content, str):
        return [Block(content)]
    out = []
    for part in content or []:
        control = part.get("cache_control")
        ttl = None if control is None else str(control.get("ttl", "5m"))
        out.append(Block(str(part.get("text") or ""), ttl))
    return out


def _schema(seen: Seen) -> Any:
    body = seen.body
    if seen.vendor == "openai":
        return body["response_format"]["json_schema"]
    if seen.vendor == "anthropic":
        return body.get("output_config") or body.get("tools")
    config = body.get("generationConfig") or {}
    return config.get("responseJsonSchema") or config.get("responseSchema")


def prompt_of(seen: Seen, *, schema_first: bool = True) -> Prompt:
    """What ``seen``'s model reads, in the vendor's order (see the module's docstring)."""
    body = seen.body
    schema = json.dumps(_schema(seen), separators=(",", ":"))
    blocks: list[Block] = []
    if seen.vendor == "openai":
        for m in body["messages"]:
            blocks += _blocks(m["content"])
    elif seen.vendor == "anthropic":
        blocks += _blocks(body.get("system") or "")
        for m in body["messages"]:
            blocks += _blocks(m["content"])
    elif seen.vendor == "google":
        for c in [body.get("systemInstruction") or {}, *body.get("contents", [])]:
            blocks += [Block(str(p.get("text") or "")) for p in c.get("parts", [])]
    else:
        raise ValueError(f"no vendor's path: {seen.path}")
    return Prompt(schema, tuple(blocks), schema_first)


def output_name(seen: Seen) -> str:
    """The name of the type the request asks for (``CodeEdits``, ``Code``, ``Verdict``...):
    OpenAI's ``response_format.json_schema.name``, else the schema's ``title``."""
    schema = _schema(seen)
    if seen.vendor == "openai":
        return str(schema["name"])
    if isinstance(schema, dict) and "format" in schema:
        schema = schema["format"]["schema"]
    if isinstance(schema, list):  # Anthropic's forced tool
        schema = schema[0]["input_schema"]
    return str(schema.get("title", ""))


@dataclass(frozen=True)
class Bill:
    """One request as billed: ``input`` is every input token (cache reads and writes
    included), ``usd`` at ``prices.json``'s rates."""

    input: int
    cached: int
    write_5m: int
    write_1h: int
    output: int
    usd: float


@dataclass
class Meter:
    """One vendor's prompt cache and bill for one task (``model`` as in ``prices.json``).
    ``schema_first`` False: the output schema is not part of any cached prefix."""

    vendor: str
    model: str
    schema_first: bool = True
    bills: list[Bill] = field(default_factory=list)
    _sent: list[bytes] = field(default_factory=list)
    _entries: dict[bytes, tuple[float, float]] = field(default_factory=dict)  # -> (expiry, ttl)

    def reply(self, seen: Seen, text: str) -> dict[str, Any]:
        """``text`` as the vendor's answer to ``seen``, with the usage this meter bills."""
        prompt = prompt_of(seen, schema_first=self.schema_first)
        data = prompt.data()
        total = math.ceil(len(data) / BYTES_PER_TOKEN)
        out = math.ceil(len(text) / BYTES_PER_TOKEN)
        if self.vendor == "anthropic":
            read, w5, w1h = self._anthropic(prompt, data)
        else:
            read, w5, w1h = self._prefix(data), 0, 0
        self._sent.append(data)
        self.bills.append(Bill(total, read, w5, w1h, out, self._usd(total, read, w5, w1h, out)))
        if self.vendor == "openai":
            return openai_body(text, prompt_tokens=total, completion_tokens=out,
                               cached_tokens=read, model=self.model.partition(":")[2])
        if self.vendor == "anthropic":
            return anthropic_body(text, input_tokens=total - read - w5 - w1h,
                                  output_tokens=out, cache_read=read, cache_write_5m=w5,
                                  cache_write_1h=w1h)
        return gemini_body(text, prompt_tokens=total, output_tokens=out, cached_tokens=read)

    def _prefix(self, data: bytes) -> int:
        """OpenAI's and Gemini's automatic caches: the longest prefix an earlier request
        sent, if it reaches the minimum (OpenAI: in 128-token increments)."""
        common = max((_common(data, old) for old in self._sent), default=0)
        n = tokens(common)
        if n < MIN_PREFIX[self.vendor]:
            return 0
        if self.vendor == "openai":
            base = MIN_PREFIX["openai"]
            return base + (n - base) // OPENAI_INCREMENT * OPENAI_INCREMENT
        return n

    def _anthropic(self, prompt: Prompt, data: bytes) -> tuple[int, int, int]:
        """(read, 5-minute writes, 1-hour writes) at Anthropic's breakpoints."""
        ends = prompt.ends()
        marks = [(end, ttl) for end, ttl in ends if ttl is not None]
        if not marks:
            return 0, 0, 0
        now = time.monotonic()
        last = marks[-1][0]
        read_end = 0
        for end, _ in ends:
            key = _key(data[:end])
            alive = self._entries.get(key)
            if end <= last and alive is not None and alive[0] > now:
                read_end = end
        if read_end:
            key = _key(data[:read_end])
            self._entries[key] = (now + self._entries[key][1], self._entries[key][1])
        if tokens(last) < MIN_PREFIX["anthropic"] or last <= read_end:
            return tokens(read_end), 0, 0
        writes = {"5m": 0, "1h": 0}
        start = read_end
        for end, ttl in marks:
            if end <= read_end:
                continue
            assert ttl is not None
            writes[ttl] += tokens(end) - tokens(start)
            start = end
            if tokens(end) >= MIN_PREFIX["anthropic"]:
                self._entries[_key(data[:end])] = (now + TTL_S[ttl], TTL_S[ttl])
        return tokens(read_end), writes["5m"], writes["1h"]

    def _usd(self, total: int, read: int, w5: int, w1h: int, out: int) -> float:
        p = PRICES[self.model]
        plain = total - read - w5 - w1h
        usd = (plain * p["input"] + read * p.get("cached_input", p["input"])
               + w5 * p.get("cache_write", p["input"])
               + w1h * p.get("cache_write_1h", p.get("cache_write", p["input"]))
               + out * p["output"])
        return float(usd) / 1_000_000

    def total(self) -> Bill:
        """The sum of every bill so far."""
        return Bill(*(sum(getattr(b, f) for b in self.bills) for f in Bill.__dataclass_fields__))


def _common(a: bytes, b: bytes) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    lo, hi = 0, n
    while lo < hi:  # binary search on equal prefixes: the bodies are tens of KB
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _key(prefix: bytes) -> bytes:
    return hashlib.sha256(prefix).digest()
