"""Configured secrets, and scrubbing them from every text that leaves the process.

Whatever reads a secret (a NATS password or token, an API key, a file named by a
``*_file`` setting) registers it here; ``Bus.publish_raw`` scrubs message bodies
and the headers swarmbus does not own before they reach the stream, and the log
configuration scrubs every log line. So a provider that echoes a key in an error
message cannot put it in a result, a dead letter, the trail or a log, whichever
path the text takes.

Scrubbing replaces text wherever it occurs, so it is only sound for a value that
cannot occur in text by chance. A value that cannot be a secret, or that our own
words contain, is not registered: scrubbing ``k`` would turn ``swarmbus.TaskRequest``
into ``swarmbus.Tas[REDACTED]Request``, scrubbing ``ollama`` every model name
``ollama:...``. Such a value is named in a warning instead (by the setting it came
from, never by the value), and the protocol's own headers and subjects are never
rewritten whatever is registered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Mapping

import structlog

from swarmbus.protocols import headers as _headers
from swarmbus.protocols import registry

__all__ = [
    "MASK",
    "MIN_SECRET_CHARS",
    "PLACEHOLDER_KEYS",
    "register_secret",
    "registered_secrets",
    "scrub",
    "scrub_bytes",
    "scrub_headers",
]

log = structlog.get_logger("swarmbus.bus")

MASK = "[REDACTED]"

MIN_SECRET_CHARS = 8
"""Values shorter than this are not scrubbed. Every real credential is longer (OpenAI
``sk-...`` keys are 51+ characters, Anthropic's 100+, Google's 39, NATS nkey seeds 58,
``secrets.token_urlsafe(16)`` 22), and 8 is the shortest password NIST SP 800-63B
accepts at all. Below it a value is a fragment of ordinary words and of our own
vocabulary (``k`` is in ``TaskRequest``, ``coder`` in every coder's message), so
scrubbing it would rewrite text without hiding anything."""

PLACEHOLDER_KEYS = frozenset({
    # Ollama, docs/openai.md ("OpenAI compatibility"): api_key='ollama',  # required but ignored
    "ollama",
    # vLLM, examples/online_serving/openai_*_client.py: openai_api_key = "EMPTY"
    "empty",
    # vLLM, docs "OpenAI-Compatible Server": vllm serve ... --api-key token-abc123 (the
    # example key every copy of that page uses: public, so nothing to hide)
    "token-abc123",
    # llama.cpp, tools/server/README.md (was examples/server/): api_key = "sk-no-key-required"
    # (also what swarmbus itself sends to a local server without a key)
    "sk-no-key-required",
    # LM Studio, docs (OpenAI compatibility, tool use): api_key="lm-studio"; its
    # Anthropic-compatible endpoint's docs: ANTHROPIC_AUTH_TOKEN=lmstudio
    "lm-studio",
    "lmstudio",
})
"""Keys that local OpenAI-compatible servers document as placeholders (compared without
regard to case): sent as they are, never scrubbed, named in a warning."""

# Headers swarmbus (or the NATS server: every ``Nats-`` header is an instruction to it)
# reads as protocol: ids, type names, names and hashes, never free text. Rewriting one
# breaks routing, de-duplication or the server's checks, so they are passed as they are.
_PROTOCOL_HEADERS = frozenset({
    _headers.TYPE, _headers.MSG_ID, _headers.CAUSATION_ID, _headers.SENDER, _headers.ROUND,
    _headers.MODEL, _headers.WORKFLOW,
})
_SERVER_HEADER_PREFIX = "Nats-"

_PREFIX_CHARS = 12  # a key echoed cut short ("sk-live-abc123...") is still recognised
_MIN_PREFIX_SECRET = 20

_lock = threading.Lock()
_secrets: dict[str, str] = {}  # value -> where it came from (for messages, never the value)
_warned: set[tuple[str, str]] = set()
_vocabulary: tuple[int, frozenset[str]] = (-1, frozenset())
_pattern: re.Pattern[str] | None = None
_pattern_bytes: re.Pattern[bytes] | None = None


def register_secret(value: str | None, *, source: str = "") -> bool:
    """Scrub ``value`` from every message and log line from now on; ``source`` names
    the setting it came from (``OPENAI_API_KEY``, ``nats.password``, a file path).

    Returns True when ``value`` is scrubbed. Returns False, and logs a warning that
    names ``source`` and why (never the value), for a value that cannot be scrubbed
    without rewriting our own text: shorter than ``MIN_SECRET_CHARS``, a documented
    placeholder (``PLACEHOLDER_KEYS``), only digits (it would rewrite numbers), or part
    of the protocol's own words (a type, field, header or status name). Empty values
    are ignored (False, no warning). Thread-safe; idempotent.
    """
    global _pattern, _pattern_bytes
    value = (value or "").strip()  # the core is what text can hold; padding hides nothing
    if not value:
        return False
    with _lock:
        if value in _secrets:
            return True
        why = _unsafe(value)
        if why is not None:
            if (source, why) not in _warned:
                _warned.add((source, why))
                _warn(source or "unnamed", why)
            return False
        _secrets[value] = source
        escaped = json.dumps(value)[1:-1]  # as it appears inside a JSON string
        if escaped != value:
            _secrets[escaped] = source
        alternatives = []
        for secret in sorted(_secrets, key=len, reverse=True):
            alternatives.append(re.escape(secret))
            prefix = secret[:_PREFIX_CHARS]
            if len(secret) >= _MIN_PREFIX_SECRET and _unsafe(prefix) is None:
                # A prefix of a long key followed by more key-like characters.
                alternatives.append(re.escape(prefix) + r"[A-Za-z0-9_\-]*")
        text = "|".join(alternatives)
        _pattern = re.compile(text)
        _pattern_bytes = re.compile(text.encode())
        return True


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
    """``scrub`` for bytes (a UTF-8 message body)."""
    pattern = _pattern_bytes
    if pattern is None or not data:
        return data
    return pattern.sub(MASK.encode(), data)


def scrub_headers(hdrs: Mapping[str, str]) -> dict[str, str]:
    """``hdrs`` with registered secrets scrubbed from the values of headers that are
    not protocol: the envelope's (``Swarm-Type``, ``Nats-Msg-Id``, ``Swarm-Sender``...)
    and every ``Nats-`` header the server acts on pass as they are."""
    if _pattern is None:
        return dict(hdrs)
    return {k: v if k in _PROTOCOL_HEADERS or k.startswith(_SERVER_HEADER_PREFIX)
            else scrub(v) for k, v in hdrs.items()}


def _warn(setting: str, why: str) -> None:
    if structlog.is_configured():  # a daemon's log (JSON lines, scrubbed)
        log.warning("secret not scrubbed", setting=setting, why=why)
    else:  # a library user's or a client command's: stdlib logging, stderr by default
        logging.getLogger("swarmbus.bus").warning(
            "secret not scrubbed: the value of %s is %s", setting, why)


def _unsafe(value: str) -> str | None:
    """Why scrubbing ``value`` would rewrite text that is not a secret; None if it
    would not."""
    bare = value.strip()
    if bare.lower() in PLACEHOLDER_KEYS:
        return ("a documented placeholder key of local model servers, not a secret: "
                "sent as it is, not scrubbed")
    if len(bare) < MIN_SECRET_CHARS:
        return (f"shorter than {MIN_SECRET_CHARS} characters: too short to scrub "
                "without rewriting ordinary words and swarmbus's own, so it is not "
                "scrubbed from messages and logs; if it is a real secret, use a longer one")
    if bare.isdigit():
        return ("only digits: scrubbing it would rewrite numbers in messages, so it is "
                "not scrubbed; if it is a real secret, use a longer random one with letters")
    if any(bare in word for word in _protocol_words()):
        return ("part of swarmbus's own vocabulary (a type, field, header or status name): "
                "scrubbing it would corrupt messages, so it is not scrubbed; if it is a "
                "real secret, use a random one")
    return None


def _protocol_words() -> frozenset[str]:
    """The words messages are made of: header names, the subject prefix, every
    registered type's name, field names and literal values (statuses, reasons,
    decisions). Recomputed when a type is registered (a user's, after start)."""
    global _vocabulary
    types = list(registry)
    data = registry.data_types()
    size = len(types) + len(data)
    if _vocabulary[0] == size:
        return _vocabulary[1]
    words: set[str] = {"swarm", *_PROTOCOL_HEADERS}
    for name, model in [(t.swarm_type, t) for t in types] + list(data.items()):
        words.add(name)
        # A user's type without a JSON Schema: its name still counts.
        with contextlib.suppress(Exception):
            _schema_words(model.model_json_schema(), words)
    _vocabulary = (size, frozenset(words))
    return _vocabulary[1]


def _schema_words(node: object, words: set[str]) -> None:
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            words.update(props)
        enum = node.get("enum")
        if isinstance(enum, list):
            words.update(v for v in enum if isinstance(v, str))
        const = node.get("const")
        if isinstance(const, str):
            words.add(const)
        for child in node.values():
            _schema_words(child, words)
    elif isinstance(node, list):
        for child in node:
            _schema_words(child, words)
