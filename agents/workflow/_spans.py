"""The GenAI spans of a step: ``chat {model}`` per model call, ``execute_tool
sandbox.pytest`` per sandbox run, and a ``swarmbus.verdict`` event for a verdict with
its findings. Prompts and outputs go on spans only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from pydantic import BaseModel

from swarmbus.bus import COST_ATTRIBUTE, capture_content, gen_ai_provider, tracer
from swarmbus.protocols import Finding, TestReport

from ..models import ModelRequest, ModelResponse

__all__ = ["chat_span", "record_report", "record_response", "tool_span", "verdict_event"]

_provider = gen_ai_provider


@contextmanager
def chat_span(model_name: str, request: ModelRequest[Any]) -> Iterator[Span]:
    """The span of one model call (kind CLIENT) by ``model_name`` (``provider:model``)."""
    provider, _, model = model_name.partition(":")
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": _provider(provider),
        "gen_ai.request.model": model or model_name,
        "gen_ai.output.type": "json",
    }
    attrs["gen_ai.request.max_tokens"] = request.settings.max_tokens
    if request.settings.temperature is not None:
        attrs["gen_ai.request.temperature"] = request.settings.temperature
    if capture_content():
        attrs["gen_ai.system_instructions"] = json.dumps(
            [{"type": "text", "content": request.system}])
        attrs["gen_ai.input.messages"] = json.dumps(
            [{"role": m.role, "parts": [{"type": "text", "content": m.content}]}
             for m in request.messages])
    with tracer().start_as_current_span(f"chat {model or model_name}", kind=SpanKind.CLIENT,
                                        attributes=attrs) as span:
        yield span


def record_response(span: Span, response: ModelResponse[Any], step: str) -> None:
    """Put what the call used on ``span``: the answering model, tokens (input includes
    cache reads and writes), the cost in ``swarmbus.cost_usd`` (USD; absent when unpriced),
    the vendor's finish reasons (``gen_ai.response.finish_reasons``) when known."""
    if not span.is_recording():
        return
    p = response.provenance
    span.set_attributes({
        "gen_ai.provider.name": _provider(p.provider),
        "gen_ai.response.model": p.model,
        "gen_ai.usage.input_tokens": p.input_tokens,
        "gen_ai.usage.output_tokens": p.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": p.cached_tokens,
        "gen_ai.usage.cache_creation.input_tokens": p.cache_write_tokens,
        "swarmbus.step": step,
        "swarmbus.from_cache": p.from_cache,
    })
    if p.cost_usd is not None:
        span.set_attribute(COST_ATTRIBUTE, p.cost_usd)
    if response.finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", list(response.finish_reasons))
    if capture_content():
        out = response.output
        text = out.model_dump_json() if isinstance(out, BaseModel) else str(out)
        span.set_attribute("gen_ai.output.messages", json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": text}]}]))


@contextmanager
def tool_span(name: str) -> Iterator[Span]:
    """The span of running tool ``name`` (kind INTERNAL, ``execute_tool``)."""
    with tracer().start_as_current_span(
        f"execute_tool {name}", kind=SpanKind.INTERNAL,
        attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                    "gen_ai.tool.type": "extension"},
    ) as span:
        yield span


def record_report(span: Span, report: TestReport) -> None:
    """A sandbox run's outcome on its span: passed, failed, errors, timed out."""
    span.set_attributes({
        "swarmbus.tests.passed": report.passed, "swarmbus.tests.failed": report.failed,
        "swarmbus.tests.errors": report.errors, "swarmbus.tests.timed_out": report.timed_out,
        "swarmbus.tests.ok": report.ok,
    })


def verdict_event(route: object, findings: list[Finding]) -> None:
    """A ``swarmbus.verdict`` event on the current span: the route value and each
    finding's severity, target and location (explanations only with content capture)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attrs: dict[str, Any] = {
        "swarmbus.findings.count": len(findings),
        "swarmbus.findings.severity": [f.severity for f in findings],
        "swarmbus.findings.target": [f.target for f in findings],
        "swarmbus.findings.location": [f.location for f in findings],
    }
    if route is not None:
        attrs["swarmbus.verdict"] = str(getattr(route, "value", route))
    if capture_content():
        attrs["swarmbus.findings.explanation"] = [f.explanation for f in findings]
    span.add_event("swarmbus.verdict", attributes=attrs)
