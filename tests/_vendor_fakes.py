"""Loopback HTTP servers that speak each vendor's wire format, for the real SDK clients.

Every provider test goes through the official SDK (``openai``, ``anthropic``,
``google-genai``) to a ``FakeServer`` on a free port: no SDK is mocked. Any test
can use them (``tests/conftest.py`` has ``fake`` / ``fake2`` fixtures), including a
whole workflow across the three SDKs: give a ``responder`` (a function from the
request the fake received to a ``Canned`` reply, or to a body for a 200) instead
of, or after, a script of canned replies. ``Seen.prompt_text()`` and
``Seen.vendor`` let one responder serve every vendor's wire format; ``reply_body``
writes an answer in it, and ``cut_at_limit`` answers like a model that would write
more than the request's output limit (``max_completion_tokens``, ``max_tokens``,
``maxOutputTokens``) lets it. A ``Canned`` reply with ``delay_s`` answers late, and the
fake notes whether it ``answered`` or the client went away first (``dropped``). Gemini's
explicit-cache create (``POST .../cachedContents``) is ``Seen.cache_create`` (no vendor's
generate request, so ``reply_body`` refuses it); answer it with ``gemini_cache_body``.
"""

from __future__ import annotations

import json
import math
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from pydantic import BaseModel

from swarmbus.agents.models import ChatMessage, ModelRequest, ModelSettings

Vendor = Literal["openai", "anthropic", "google", "unknown"]


@dataclass
class Canned:
    """One scripted HTTP answer: ``body`` as JSON, or ``raw`` bytes as they are (with
    ``content_type``), as a gateway's HTML page or a broken proxy sends them."""

    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw: bytes | None = None
    content_type: str = "application/json"


@dataclass
class Seen:
    """One request the fake received (``body`` parsed as JSON when it is JSON), and when
    (``at``, ``time.monotonic()``)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)

    @property
    def vendor(self) -> Vendor:
        """Whose generate request this is, from its path (a Gemini cache create is
        ``unknown`` here: see ``cache_create``)."""
        if self.path.endswith("/chat/completions"):
            return "openai"
        if self.path.endswith("/messages"):
            return "anthropic"
        if ":generateContent" in self.path:
            return "google"
        return "unknown"

    @property
    def cache_create(self) -> bool:
        """Whether this is a Gemini explicit-cache create (``POST .../cachedContents``,
        body ``model``, ``ttl`` like ``"300s"``, ``systemInstruction``, ``contents``)."""
        return self.method == "POST" and self.path.partition("?")[0].endswith("/cachedContents")

    @property
    def cached_content(self) -> str | None:
        """The explicit cache a Gemini generate request refers to (``cachedContent``)."""
        body = self.body if isinstance(self.body, dict) else {}
        return body.get("cachedContent") if self.vendor == "google" else None

    def prompt_text(self) -> str:
        """The system prompt and every message's text, in order, one per line."""
        body = self.body if isinstance(self.body, dict) else {}
        parts: list[str] = []
        if self.vendor == "openai":
            parts += [str(m.get("content") or "") for m in body.get("messages", [])]
        elif self.vendor == "anthropic":  # a string, or content blocks
            parts.append(_text(body.get("system")))
            parts += [_text(m.get("content")) for m in body.get("messages", [])]
        elif self.vendor == "google" or self.cache_create:
            system = body.get("systemInstruction") or {}
            chunks = [system, *body.get("contents", [])]
            parts += [str(p.get("text") or "") for c in chunks for p in c.get("parts", [])]
        return "\n".join(parts)

    def output_limit(self) -> int | None:
        """The most output tokens the request allows (None: it sets no limit)."""
        body = self.body if isinstance(self.body, dict) else {}
        if self.vendor == "openai":
            value = body.get("max_completion_tokens", body.get("max_tokens"))
        elif self.vendor == "anthropic":
            value = body.get("max_tokens")
        elif self.vendor == "google":
            value = (body.get("generationConfig") or {}).get("maxOutputTokens")
        else:
            value = None
        return int(value) if value is not None else None

    def input_tokens(self) -> int:
        """What a tokenizer would count for the request: one token per 4 bytes of its
        body (prompts, schema and framing), rounded up."""
        return math.ceil(len(json.dumps(self.body).encode()) / 4)


def _text(content: Any) -> str:
    """An Anthropic system prompt or message content as text: a string, or the text of
    its content blocks joined."""
    if isinstance(content, list):
        return "".join(str(b.get("text") or "") for b in content if isinstance(b, dict))
    return str(content or "")


Responder = Callable[[Seen], "Canned | dict[str, Any]"]
"""Answers one request: a ``Canned`` reply, or a body sent with status 200."""


class FakeServer:
    """A threaded HTTP server answering POSTs on loopback.

    Each request gets the next ``Canned`` reply of the script (``push``); when the
    script is empty, ``responder(seen)`` if one is set, else ``default`` if set,
    else a 500. Every request is kept in ``requests``; those whose reply was written
    whole in ``answered``; those whose client closed the connection while the fake
    waited out the reply's ``delay_s`` in ``dropped`` (their reply is never sent).
    """

    def __init__(self, responder: Responder | None = None) -> None:
        self.script: deque[Canned] = deque()
        self.default: Canned | None = None
        self.responder = responder
        self.requests: list[Seen] = []
        self.answered: list[Seen] = []
        self.dropped: list[Seen] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                seen = Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                            body)
                with fake._lock:
                    fake.requests.append(seen)
                    canned = fake.script.popleft() if fake.script else None
                    responder = fake.responder
                if canned is None and responder is not None:
                    try:
                        answer = responder(seen)
                    except Exception as exc:  # a broken responder is a 500 naming why
                        answer = Canned({"error": {"message": f"fake responder: {exc!r}"}}, 500)
                    canned = answer if isinstance(answer, Canned) else Canned(answer)
                if canned is None:
                    canned = fake.default
                if canned is None:
                    canned = Canned({"error": {"message": "fake: no canned reply"}}, status=500)
                if canned.delay_s and not fake._wait(self.connection, canned.delay_s, seen):
                    return
                payload = canned.raw if canned.raw is not None else json.dumps(
                    canned.body).encode()
                try:
                    self.send_response(canned.status)
                    self.send_header("content-type", canned.content_type)
                    self.send_header("content-length", str(len(payload)))
                    for name, value in canned.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up (timeout test)
                with fake._lock:
                    fake.answered.append(seen)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _wait(self, conn: socket.socket, delay_s: float, seen: Seen) -> bool:
        """Wait ``delay_s`` before answering; False when the fake stops or the client
        closes the connection first (noted in ``dropped``)."""
        end = time.monotonic() + delay_s
        while (left := end - time.monotonic()) > 0:
            if self._stop.is_set():
                return False
            readable, _, _ = select.select([conn], [], [], min(left, 0.02))
            if not readable:
                continue
            try:
                gone = conn.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                gone = True
            if gone:
                with self._lock:
                    self.dropped.append(seen)
                return False
            self._stop.wait(min(left, 0.02))  # bytes of a next request: not an answer
        return not self._stop.is_set()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def push(self, *canned: Canned) -> None:
        with self._lock:
            self.script.extend(canned)

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- wire formats -------------------------------------------------------------------


def openai_body(
    content: str | None,
    *,
    finish_reason: str = "stop",
    refusal: str | None = None,
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    usage: bool = True,
    choices: bool = True,
    model: str = "gpt-4o",
) -> dict[str, Any]:
    """A chat completion. ``usage=False`` omits ``usage`` (as some proxies do);
    ``choices=False`` sends an empty ``choices`` list (an empty reply)."""
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [],
    }
    if choices:
        body["choices"].append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        )
    if usage:
        body["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
        }
    return body


def openai_error(
    status: int, message: str = "fake error", *, headers: dict[str, str] | None = None
) -> Canned:
    """An OpenAI error body. Unless ``headers`` are given, ``retry-after-ms: 5`` keeps
    the SDK's own retries fast."""
    body = {"error": {"message": message, "type": "fake_error", "param": None, "code": None}}
    return Canned(body, status=status,
                  headers={"retry-after-ms": "5"} if headers is None else headers)


def anthropic_body(
    text: str | None = None,
    *,
    tool_input: dict[str, Any] | str | None = None,
    stop_reason: str = "end_turn",
    input_tokens: int = 100,
    output_tokens: int = 20,
    cache_read: int = 0,
    cache_write_5m: int = 0,
    cache_write_1h: int = 0,
    stop_details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A message. Anthropic's ``input_tokens`` excludes cache reads and writes;
    ``tool_input`` may be a JSON string (as some models send it) instead of an object."""
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "text", "text": text})
    if tool_input is not None:
        content.append(
            {"type": "tool_use", "id": "toolu_1", "name": "final_answer", "input": tool_input}
        )
    body: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": cache_read,
            "cache_creation_input_tokens": cache_write_5m + cache_write_1h,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache_write_5m,
                "ephemeral_1h_input_tokens": cache_write_1h,
            },
        },
    }
    if stop_details is not None:
        body["stop_details"] = stop_details
    return body


def anthropic_error(
    status: int, kind: str = "api_error", *, message: str = "",
    headers: dict[str, str] | None = None,
) -> Canned:
    body = {"type": "error", "error": {"type": kind, "message": message or f"fake {kind}"}}
    return Canned(body, status=status,
                  headers={"retry-after-ms": "5"} if headers is None else headers)


def gemini_body(
    text: str | None,
    *,
    finish_reason: str = "STOP",
    prompt_tokens: int = 100,
    output_tokens: int = 20,
    thoughts_tokens: int = 0,
    cached_tokens: int = 0,
    block_reason: str | None = None,
    usage: bool = True,
    candidates: bool = True,
) -> dict[str, Any]:
    """A generateContent reply. ``thoughtsTokenCount`` is separate from
    ``candidatesTokenCount`` on the wire; ``usage=False`` omits ``usageMetadata``;
    ``candidates=False`` (without ``block_reason``) is an empty reply."""
    body: dict[str, Any] = {"modelVersion": "gemini-2.5-pro"}
    if usage:
        body["usageMetadata"] = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "thoughtsTokenCount": thoughts_tokens,
            "cachedContentTokenCount": cached_tokens,
            "totalTokenCount": prompt_tokens + output_tokens + thoughts_tokens,
        }
    if block_reason is not None:
        body["promptFeedback"] = {"blockReason": block_reason}
    elif candidates:
        parts = [{"text": text}] if text is not None else []
        body["candidates"] = [
            {
                "content": {"role": "model", "parts": parts},
                "finishReason": finish_reason,
                "index": 0,
            }
        ]
    return body


def gemini_error(
    status: int, state: str = "UNAVAILABLE", *, message: str = "",
    retry_delay: str | None = None, headers: dict[str, str] | None = None,
) -> Canned:
    """A Google API error; ``retry_delay`` (e.g. ``"7s"``) adds a ``RetryInfo`` detail."""
    error: dict[str, Any] = {"code": status, "message": message or f"fake {state}",
                             "status": state}
    if retry_delay is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        ]
    return Canned({"error": error}, status, headers=headers or {})


def gemini_cache_body(
    tokens: int, *, name: str = "cachedContents/fake-1", model: str = "gemini-2.5-flash",
    lifetime_s: float = 300.0, usage: bool = True,
) -> dict[str, Any]:
    """A ``cachedContents`` create reply: the cache's ``name``, its ``model``,
    ``usageMetadata.totalTokenCount`` (``tokens``; ``usage=False`` omits it) and
    ``createTime`` / ``expireTime`` ``lifetime_s`` apart (RFC 3339, UTC, from now)."""
    now = time.time()

    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"

    body: dict[str, Any] = {"name": name, "model": f"models/{model}", "displayName": "",
                            "createTime": stamp(now), "updateTime": stamp(now),
                            "expireTime": stamp(now + lifetime_s)}
    if usage:
        body["usageMetadata"] = {"totalTokenCount": tokens}
    return body


def reply_body(
    seen: Seen, text: str, *, input_tokens: int = 100, output_tokens: int = 20,
    cut: bool = False,
) -> dict[str, Any]:
    """``text`` as an answer in the wire format of ``seen``'s vendor, with this usage;
    ``cut``: stopped at the output limit (``length``, ``max_tokens``, ``MAX_TOKENS``).
    Raises ``ValueError`` for a request in no vendor's format (the fake answers 500)."""
    if seen.vendor == "openai":
        return openai_body(text, finish_reason="length" if cut else "stop",
                           prompt_tokens=input_tokens, completion_tokens=output_tokens)
    if seen.vendor == "anthropic":
        return anthropic_body(text, stop_reason="max_tokens" if cut else "end_turn",
                              input_tokens=input_tokens, output_tokens=output_tokens)
    if seen.vendor == "google":
        return gemini_body(text, finish_reason="MAX_TOKENS" if cut else "STOP",
                           prompt_tokens=input_tokens, output_tokens=output_tokens)
    raise ValueError(f"no vendor's path: {seen.path}")


def cut_at_limit(text: str, *, would_write: int) -> Responder:
    """A model that would write ``would_write`` tokens of ``text`` (4 characters a token):
    the request's output limit stops it there, as a provider does (a prefix of ``text``,
    finish reason ``length``, usage ``completion_tokens`` = the limit). The input is
    counted as ``Seen.input_tokens``."""

    def answer(seen: Seen) -> dict[str, Any]:
        limit = seen.output_limit()
        if limit is None or limit >= would_write:
            return reply_body(seen, text, input_tokens=seen.input_tokens(),
                              output_tokens=would_write)
        return reply_body(seen, text[: 4 * limit], input_tokens=seen.input_tokens(),
                          output_tokens=limit, cut=True)

    return answer


# --- shared request fixtures ---------------------------------------------------------


class Plan(BaseModel):
    """A small output type for the tests."""

    title: str
    steps: list[str]


PLAN = Plan(title="ship it", steps=["write", "test"])
PLAN_JSON = PLAN.model_dump_json()


def plan_request(prompt: str = "make a plan", **settings: Any) -> ModelRequest[Plan]:
    return ModelRequest(
        system="You plan.",
        messages=(ChatMessage(role="user", content=prompt),),
        output_type=Plan,
        settings=ModelSettings(**settings),
    )


SECRET = "sk-test-SECRET-do-not-leak-0123456789"
"""The fake API key every ``fake_keys`` fixture sets; it must never appear in any text we write."""
