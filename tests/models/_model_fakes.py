"""Loopback HTTP servers that speak each vendor's wire format, for the real SDK clients.

Every provider test goes through the official SDK (``openai``, ``anthropic``,
``google-genai``) to a ``FakeServer`` on a free port: no SDK is mocked.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import BaseModel

from swarmbus.agents.models import ChatMessage, ModelRequest, ModelSettings


@dataclass
class Canned:
    """One scripted HTTP answer."""

    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeServer:
    """A threaded HTTP server answering POSTs with ``Canned`` replies in order.

    When the script runs out it answers ``default`` (if set) or 500.
    """

    def __init__(self) -> None:
        self.script: deque[Canned] = deque()
        self.default: Canned | None = None
        self.requests: list[Seen] = []
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
                with fake._lock:
                    fake.requests.append(
                        Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                             body)
                    )
                    canned = fake.script.popleft() if fake.script else fake.default
                if canned is None:
                    canned = Canned({"error": {"message": "fake: no canned reply"}}, status=500)
                if canned.delay_s and fake._stop.wait(canned.delay_s):
                    return
                payload = json.dumps(canned.body).encode()
                try:
                    self.send_response(canned.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for name, value in canned.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

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


# --- wire formats -------------------------------------------------------------------


def openai_body(
    content: str | None,
    *,
    finish_reason: str = "stop",
    refusal: str | None = None,
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
    cached_tokens: int = 0,
    model: str = "gpt-4o",
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        },
    }


def openai_error(status: int, message: str = "fake error") -> Canned:
    body = {"error": {"message": message, "type": "fake_error", "param": None, "code": None}}
    return Canned(body, status=status, headers={"retry-after-ms": "5"})


def anthropic_body(
    text: str | None = None,
    *,
    tool_input: dict[str, Any] | None = None,
    stop_reason: str = "end_turn",
    input_tokens: int = 100,
    output_tokens: int = 20,
    cache_read: int = 0,
    stop_details: dict[str, Any] | None = None,
) -> dict[str, Any]:
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
            "cache_creation_input_tokens": 0,
        },
    }
    if stop_details is not None:
        body["stop_details"] = stop_details
    return body


def anthropic_error(status: int, kind: str = "api_error") -> Canned:
    body = {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}
    return Canned(body, status=status, headers={"retry-after-ms": "5"})


def gemini_body(
    text: str | None,
    *,
    finish_reason: str = "STOP",
    prompt_tokens: int = 100,
    output_tokens: int = 20,
    thoughts_tokens: int = 0,
    cached_tokens: int = 0,
    block_reason: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "thoughtsTokenCount": thoughts_tokens,
            "cachedContentTokenCount": cached_tokens,
            "totalTokenCount": prompt_tokens + output_tokens + thoughts_tokens,
        },
        "modelVersion": "gemini-2.5-pro",
    }
    if block_reason is not None:
        body["promptFeedback"] = {"blockReason": block_reason}
    else:
        parts = [{"text": text}] if text is not None else []
        body["candidates"] = [
            {
                "content": {"role": "model", "parts": parts},
                "finishReason": finish_reason,
                "index": 0,
            }
        ]
    return body


def gemini_error(status: int, state: str = "UNAVAILABLE") -> Canned:
    return Canned({"error": {"code": status, "message": f"fake {state}", "status": state}}, status)


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
