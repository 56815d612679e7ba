"""Configured secrets, and scrubbing them from every text that leaves the process.

Whatever reads a secret (a NATS password or token, an API key, a file named by a
``*_file`` setting) registers it here; the codec scrubs message bodies and
headers before they reach the stream, and the log configuration scrubs every
log line. So a provider that echoes a key in an error message cannot put it in
a result, a dead letter, the trail or a log, whichever path the text takes.
"""

from __future__ import annotations

import json
import re
import threading

__all__ = ["MASK", "register_secret", "registered_secrets", "scrub", "scrub_bytes"]

MASK = "[REDACTED]"
_PREFIX_CHARS = 12  # a key echoed cut short ("sk-live-abc123...") is still recognised
_MIN_PREFIX_SECRET = 20

_lock = threading.Lock()
_secrets: dict[str, str] = {}  # value -> where it came from (for messages, never the value)
_pattern: re.Pattern[str] | None = None
_pattern_bytes: re.Pattern[bytes] | None = None


def register_secret(value: str | None, *, source: str = "") -> None:
    """Remember ``value`` as a secret (``source`` says where it came from, e.g.
    ``OPENAI_API_KEY``). Empty values are ignored. Thread-safe; idempotent."""
    global _pattern, _pattern_bytes
    if not value or not value.strip():
        return
    with _lock:
        if value in _secrets:
            return
        _secrets[value] = source
        escaped = json.dumps(value)[1:-1]  # as it appears inside a JSON string
        if escaped != value:
            _secrets[escaped] = source
        alternatives = []
        for secret in sorted(_secrets, key=len, reverse=True):
            alternatives.append(re.escape(secret))
            if len(secret) >= _MIN_PREFIX_SECRET:
                # A prefix of a long key followed by more key-like characters.
                alternatives.append(re.escape(secret[:_PREFIX_CHARS]) + r"[A-Za-z0-9_\-]*")
        text = "|".join(alternatives)
        _pattern = re.compile(text)
        _pattern_bytes = re.compile(text.encode())


def registered_secrets() -> int:
    """How many secrets are registered (for tests and start-up logs; never the values)."""
    with _lock:
        return len(_secrets)


def scrub(text: str) -> str:
    """``text`` with every registered secret (and long prefixes of one) replaced by MASK."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def scrub_bytes(data: bytes) -> bytes:
    pattern = _pattern_bytes
    if pattern is None or not data:
        return data
    return pattern.sub(MASK.encode(), data)
