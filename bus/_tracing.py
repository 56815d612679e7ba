"""OpenTelemetry traces: W3C trace context in the NATS headers of every message, a span
per handled message whose parent is the message's context, and the SDK set up from the
standard ``OTEL_*`` variables when the ``otel`` extra is installed.

Only ``opentelemetry-api`` is required: without an SDK every span is a no-op and
nothing is injected (an invalid context has no ``traceparent``)."""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind

from ._metrics import destination_template, export_asked

__all__ = [
    "CAPTURE_CONTENT",
    "COST_ATTRIBUTE",
    "capture_content",
    "configure_tracing",
    "inject_trace",
    "on_behalf_of",
    "process_span",
    "send_span",
    "tracer",
]

COST_ATTRIBUTE = "swarmbus.cost_usd"
"""The span attribute holding a model call's cost (USD). The GenAI conventions have none;
absent when the model is unpriced (never 0 for unknown)."""

CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""The conventions' switch: ``true`` puts prompts and outputs on ``chat`` spans."""

_TRACE_HEADERS = ("traceparent", "tracestate")

_handling: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "swarmbus_handling", default=False)
"""True while a message is handled: what is published then gets a ``send`` span."""


def tracer() -> trace.Tracer:
    """swarmbus's tracer (from the global provider: a no-op until an SDK is set)."""
    return trace.get_tracer("swarmbus")


def capture_content() -> bool:
    """Whether the user opted in to prompt and output content on spans."""
    return os.environ.get(CAPTURE_CONTENT, "").strip().lower() == "true"


def inject_trace(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers`` unless
    they carry one already (a raw message keeps its caller's). Nothing without a span."""
    if any(h in headers for h in _TRACE_HEADERS):
        return
    propagate.inject(headers)


@contextmanager
def process_span(
    name: str, headers: Mapping[str, str] | None, *, subject: str, msg_id: str,
    delivered: int, attributes: Mapping[str, str | int] | None = None,
) -> Iterator[Span]:
    """The span of handling one message (kind CONSUMER, messaging ``process``), a child
    of the context in its headers; a redelivery is a sibling of the first delivery,
    with ``messaging.message.delivery_count``. Records an exception and re-raises it."""
    parent = propagate.extract(dict(headers or {}))
    attrs: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": subject,
        "messaging.destination.template": destination_template(subject),
        "messaging.message.id": msg_id,
        "messaging.message.delivery_count": delivered,
        **(attributes or {}),
    }
    token = _handling.set(True)
    try:
        with tracer().start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER,
                                            attributes=attrs) as span:
            yield span
    finally:
        _handling.reset(token)


@contextmanager
def on_behalf_of(headers: Mapping[str, str] | None) -> Iterator[None]:
    """Inside, publishes are made for the message with ``headers`` (a dead letter
    published after its handler gave up): in its trace, each with a ``send`` span."""
    token = context.attach(propagate.extract(dict(headers or {})))
    handling = _handling.set(True)
    try:
        yield
    finally:
        _handling.reset(handling)
        context.detach(token)


@contextmanager
def send_span(subject: str, msg_id: str, headers: Mapping[str, str]) -> Iterator[None]:
    """While a message is handled (``process_span``, ``on_behalf_of``), the span of
    publishing one output (kind PRODUCER, ``send {template}``): the ``traceparent``
    injected is this span's, so the consumer's span is its child. Nothing elsewhere (a
    submit has its own span), nor for ``headers`` that carry a trace context already."""
    if not _handling.get() or any(h in headers for h in _TRACE_HEADERS):
        yield
        return
    template = destination_template(subject)
    with tracer().start_as_current_span(f"send {template}", kind=SpanKind.PRODUCER, attributes={
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": subject,
        "messaging.destination.template": template,
        "messaging.message.id": msg_id,
    }):
        yield


def configure_tracing() -> str | None:
    """Install the SDK's tracer provider with an OTLP exporter when the ``OTEL_*``
    variables ask for export (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER`` other than
    ``none``) and the ``otel`` extra is installed. Returns a line to log (what was
    done, or why not), or None when nothing was asked. Never raises for a missing extra."""
    env = os.environ
    asked = export_asked("traces")
    if asked is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        return ("OTEL_* variables ask for traces but the otel extra is not installed: "
                "pip install 'swarmbus[otel]'; tracing stays off")
    exporter: SpanExporter
    if asked == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            if env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").startswith("http"):
                from opentelemetry.exporter.otlp.proto.http import trace_exporter as http
                exporter = http.OTLPSpanExporter()
            else:
                from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc
                exporter = grpc.OTLPSpanExporter()
        except ImportError:
            return ("the OTLP exporter is not installed: pip install 'swarmbus[otel]'; "
                    "tracing stays off")
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "swarmbus")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return f"traces exported with {type(exporter).__name__}"
