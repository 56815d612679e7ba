"""OpenTelemetry metrics: model calls (tokens, duration, cost), handled messages
(consumed, processing time, redelivered, dead-lettered, in flight) and workflow outcomes,
named by the GenAI and messaging conventions where they have a name.

Only ``opentelemetry-api`` is required: without an SDK every instrument is a no-op.
Instruments come from the global meter provider when first used after a provider is
set (``metrics.get_meter("swarmbus")``), so a provider installed after import is used.
No attribute holds an unbounded value (workflow id, message id): subjects are reduced
to their template, ``swarm.<ns>.{workflow_id}.<topic>``."""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

from opentelemetry import metrics

from swarmbus.protocols import Provenance

__all__ = [
    "COST_METRIC",
    "OUTCOMES_METRIC",
    "UNPRICED_METRIC",
    "DeliveryAttributes",
    "configure_metrics",
    "dead_lettered",
    "destination_template",
    "export_asked",
    "gen_ai_provider",
    "handling",
    "metric_scope",
    "model_call",
    "model_call_failed",
    "redelivered",
    "workflow_outcome",
]

COST_METRIC = "swarmbus.gen_ai.cost"
"""Counter of what priced model calls cost (USD); the GenAI conventions have none."""
UNPRICED_METRIC = "swarmbus.gen_ai.unpriced_calls"
"""Counter of model calls whose cost is unknown (a model missing from the price table)."""
OUTCOMES_METRIC = "swarmbus.workflow.outcomes"
"""Counter of published results, by ``swarmbus.workflow.status`` and ``gen_ai.workflow.name``."""

_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)
_CALL_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                 40.96, 81.92)
_PROCESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
"""The bucket boundaries the conventions give for each histogram."""

_PROVIDERS = {"google": "gcp.gen_ai", "gemini": "gcp.gemini"}
"""Our provider prefixes whose name in the conventions differs."""

Attributes = Mapping[str, str]


def gen_ai_provider(name: str) -> str:
    """``gen_ai.provider.name`` for our provider prefix (``google`` -> ``gcp.gen_ai``)."""
    return _PROVIDERS.get(name, name)


class _Instruments:
    def __init__(self, meter: metrics.Meter) -> None:
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS)
        self.call = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_CALL_BUCKETS)
        self.cost = meter.create_counter(
            COST_METRIC, unit="USD", description="What priced model calls cost.")
        self.unpriced = meter.create_counter(
            UNPRICED_METRIC, unit="{call}", description="Model calls of unknown cost.")
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages", unit="{message}",
            description="Number of messages that were delivered to the application.")
        self.process = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=_PROCESS_BUCKETS)
        self.redelivered = meter.create_counter(
            "swarmbus.messages.redelivered", unit="{message}",
            description="Deliveries of a message delivered before.")
        self.dead_lettered = meter.create_counter(
            "swarmbus.messages.dead_lettered", unit="{message}",
            description="Messages published to the deadletter topic.")
        self.in_flight = meter.create_up_down_counter(
            "swarmbus.messages.in_flight", unit="{message}",
            description="Messages being handled now.")
        self.outcomes = meter.create_counter(
            OUTCOMES_METRIC, unit="{workflow}", description="Workflow results published.")


_cache: tuple[metrics.MeterProvider, _Instruments] | None = None


def _instruments() -> _Instruments:
    global _cache
    provider = metrics.get_meter_provider()
    cached = _cache
    if cached is None or cached[0] is not provider:  # a provider set (or reset) since
        cached = _cache = (provider, _Instruments(provider.get_meter("swarmbus")))
    return cached[1]


# -- the scope of a model call: which agent, which step ----------------------------------

_NO_SCOPE: Attributes = MappingProxyType({})
_scope: contextvars.ContextVar[Attributes] = contextvars.ContextVar(
    "swarmbus_metric_scope", default=_NO_SCOPE)


@contextmanager
def metric_scope(**names: str) -> Iterator[None]:
    """Inside, model calls and results are counted with these names besides the ones
    set outside: ``agent`` (``gen_ai.agent.name``), ``step`` (``swarmbus.step``),
    ``workflow`` (``gen_ai.workflow.name``, for outcomes). Empty values are left out."""
    token = _scope.set({**_scope.get(), **{k: v for k, v in names.items() if v}})
    try:
        yield
    finally:
        _scope.reset(token)


def _scoped() -> dict[str, str]:
    scope = _scope.get()
    attrs: dict[str, str] = {}
    if agent := scope.get("agent"):
        attrs["gen_ai.agent.name"] = agent
    if step := scope.get("step"):
        attrs["swarmbus.step"] = step
    return attrs


def _call_attributes(provider: str, model: str) -> dict[str, str]:
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": gen_ai_provider(provider),
            "gen_ai.request.model": model, "gen_ai.response.model": model, **_scoped()}


def model_call(p: Provenance) -> None:
    """Count one booked provider answer: its input and output tokens
    (``gen_ai.client.token.usage``), its latency (``gen_ai.client.operation.duration``,
    seconds), its cost (``swarmbus.gen_ai.cost``, USD) or, unpriced, one
    ``swarmbus.gen_ai.unpriced_calls``. A cache hit made no call: nothing is counted."""
    if p.from_cache:
        return
    m = _instruments()
    attrs = _call_attributes(p.provider, p.model)
    m.tokens.record(p.input_tokens, {**attrs, "gen_ai.token.type": "input"})
    m.tokens.record(p.output_tokens, {**attrs, "gen_ai.token.type": "output"})
    if p.latency_s:
        m.call.record(p.latency_s, attrs)
    if p.cost_usd is None:
        m.unpriced.add(max(p.calls, 1), attrs)
    else:
        m.cost.add(p.cost_usd, attrs)


def model_call_failed(provider: str, model: str, duration_s: float, error_type: str) -> None:
    """Count a provider call that failed without a billed answer: its duration, with
    ``error.type`` (the error's class name)."""
    attrs = {**_call_attributes(provider, model), "error.type": error_type}
    del attrs["gen_ai.response.model"]  # nothing answered
    _instruments().call.record(duration_s, attrs)


# -- messaging --------------------------------------------------------------------------

def destination_template(subject: str) -> str:
    """``subject`` without its workflow id (``swarm.<ns>.{workflow_id}.<topic>``, the
    same for ``swarmtimer.``); any other subject as it is."""
    parts = subject.split(".", 3)
    if len(parts) == 4 and parts[0] in ("swarm", "swarmtimer"):
        return f"{parts[0]}.{parts[1]}.{{workflow_id}}.{parts[3]}"
    return subject


class DeliveryAttributes:
    """The attributes of one consumer's delivery metrics, kept per destination template:
    ``messaging.system`` (``nats``), ``messaging.operation.name`` (``process``),
    ``messaging.destination.template``, ``messaging.consumer.group.name`` (``group``,
    the durable) and ``gen_ai.agent.name`` (``agent``)."""

    __slots__ = ("_known", "agent", "group")

    def __init__(self, *, group: str, agent: str) -> None:
        self.group, self.agent = group, agent
        self._known: dict[str, dict[str, str]] = {}

    def attributes(self, subject: str) -> dict[str, str]:
        template = destination_template(subject)
        attrs = self._known.get(template)
        if attrs is None:
            if len(self._known) > 256:  # a consumer's topics are few; be safe all the same
                self._known.clear()
            attrs = self._known[template] = {
                "messaging.system": "nats", "messaging.operation.name": "process",
                "messaging.destination.template": template,
                "messaging.consumer.group.name": self.group, "gen_ai.agent.name": self.agent}
        return attrs


@contextmanager
def handling(attrs: Attributes) -> Iterator[dict[str, str]]:
    """Around the handling of one delivery: ``swarmbus.messages.in_flight`` +1 (-1 when
    it ends), then one ``messaging.client.consumed.messages`` and its
    ``messaging.process.duration`` (seconds). Put ``error.type`` in the dict yielded
    when the handling failed."""
    m = _instruments()
    flight = {k: attrs[k] for k in ("messaging.system", "messaging.consumer.group.name",
                                    "gen_ai.agent.name")}
    m.in_flight.add(1, flight)
    outcome: dict[str, str] = {}
    started = time.perf_counter()
    try:
        yield outcome
    finally:
        m.in_flight.add(-1, flight)
        done = {**attrs, **outcome}
        m.consumed.add(1, done)
        m.process.record(time.perf_counter() - started, done)


def redelivered(attrs: Attributes) -> None:
    """Count a delivery of a message delivered before (``swarmbus.messages.redelivered``)."""
    _instruments().redelivered.add(1, attrs)


def dead_lettered(subject: str, *, group: str, reason: str) -> None:
    """Count a message dead-lettered by consumer ``group`` for ``reason``."""
    _instruments().dead_lettered.add(1, {
        "messaging.system": "nats", "messaging.destination.template": destination_template(
            subject), "messaging.consumer.group.name": group,
        "swarmbus.dead_letter.reason": reason})


def workflow_outcome(status: str, workflow: str = "") -> None:
    """Count a published result by its ``status`` and its workflow's name (``workflow``,
    else the one in ``metric_scope``)."""
    attrs = {"swarmbus.workflow.status": status}
    if name := workflow or _scope.get().get("workflow", ""):
        attrs["gen_ai.workflow.name"] = name
    _instruments().outcomes.add(1, attrs)


# -- export -----------------------------------------------------------------------------

def export_asked(signal: str) -> str | None:
    """What the standard variables ask for ``signal`` (``traces``, ``metrics``): its
    ``OTEL_<SIGNAL>_EXPORTER`` (lower case; '' for OTLP by default when only an endpoint,
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT``, is set), or
    None when nothing is asked or the exporter is ``none``."""
    env = os.environ
    asked = env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if asked == "none" or not (asked or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                               or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")):
        return None
    return asked


def configure_metrics() -> str | None:
    """Install the SDK's meter provider with a ``PeriodicExportingMetricReader`` when the
    ``OTEL_*`` variables ask for export (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or ``OTEL_METRICS_EXPORTER`` other than
    ``none``; ``console`` prints them) and the ``otel`` extra is installed. The reader's
    interval is ``OTEL_METRIC_EXPORT_INTERVAL`` (ms, the SDK reads it). Returns a line to
    log (what was done, or why not), or None when nothing was asked. Never raises for a
    missing extra."""
    env = os.environ
    asked = export_asked("metrics")
    if asked is None:
        return None
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            MetricExporter,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource
    except ImportError:
        return ("OTEL_* variables ask for metrics but the otel extra is not installed: "
                "pip install 'swarmbus[otel]'; metrics stay off")
    exporter: MetricExporter
    if asked == "console":
        exporter = ConsoleMetricExporter()
    else:
        protocol = (env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
                    or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", ""))
        try:
            if protocol.startswith("http"):
                from opentelemetry.exporter.otlp.proto.http import metric_exporter as http
                exporter = http.OTLPMetricExporter()
            else:
                from opentelemetry.exporter.otlp.proto.grpc import metric_exporter as grpc
                exporter = grpc.OTLPMetricExporter()
        except ImportError:
            return ("the OTLP exporter is not installed: pip install 'swarmbus[otel]'; "
                    "metrics stay off")
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "swarmbus")})
    provider = MeterProvider(resource=resource,
                             metric_readers=[PeriodicExportingMetricReader(exporter)])
    metrics.set_meter_provider(provider)
    return f"metrics exported with {type(exporter).__name__}"
