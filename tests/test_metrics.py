"""OpenTelemetry metrics, read with the SDK's ``InMemoryMetricReader`` after real runs of
the built-in team over a real nats-server with scripted models that bill fixed tokens at
a set price: token usage with the exact counts, cost summing to the result's total, calls,
deliveries per agent, a redelivery, a dead letter, nothing left in flight, the outcome by
status; an unpriced model adds no cost and counts an unpriced call; export only when the
``OTEL_*`` variables ask, and only with the extra."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from _team_helpers import Script, run_task, team
from opentelemetry import metrics
from opentelemetry.metrics import _internal as metrics_state
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.util._once import Once

from swarmbus.agents import Swarm
from swarmbus.agents.models import Billed, FunctionModel, Model, ModelRequest, Price
from swarmbus.agents.workflow import StepAgent, StepCall
from swarmbus.bus import (
    COST_METRIC,
    OUTCOMES_METRIC,
    UNPRICED_METRIC,
    ConsumerSettings,
    SwarmClient,
    configure_metrics,
)
from swarmbus.protocols import subject, topics

pytestmark = pytest.mark.anyio

PRICE = Price(input=2.0, output=10.0)  # USD per million tokens
TOKENS = {"architect": (1000, 200), "coder": (3000, 700), "reviewer": (2500, 90)}
Point = tuple[dict[str, Any], Any]


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """The SDK's meter provider in this process, read in memory; the global provider is
    reset after the test (the rest of the session runs without an SDK, as by default)."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(provider)
    yield reader
    provider.shutdown()
    metrics_state._METER_PROVIDER = None
    metrics_state._METER_PROVIDER_SET_ONCE = Once()


def points(reader: InMemoryMetricReader, name: str) -> list[Point]:
    """Every data point of metric ``name``: (attributes, the point)."""
    data = reader.get_metrics_data()
    out: list[Point] = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    out += [(dict(p.attributes or {}), p) for p in m.data.data_points]
    return out


def total(reader: InMemoryMetricReader, name: str, **match: Any) -> float:
    """The sum (or, for a histogram, the sum of values) of ``name``'s points whose
    attributes include ``match`` (``_`` in a key stands for ``.``)."""
    want = {k.replace("__", "."): v for k, v in match.items()}
    return float(sum(p.sum if hasattr(p, "sum") else p.value for a, p in points(reader, name)
                     if all(a.get(k) == v for k, v in want.items())))


def count(reader: InMemoryMetricReader, name: str, **match: Any) -> int:
    """How many values a histogram recorded on points matching ``match``."""
    want = {k.replace("__", "."): v for k, v in match.items()}
    return sum(p.count for a, p in points(reader, name)
               if all(a.get(k) == v for k, v in want.items()))


def billed(script: Script, *, unpriced: tuple[str, ...] = ()) -> dict[str, Model]:
    """The scripted team, each call billed ``TOKENS[role]`` at ``PRICE`` (or unpriced)."""
    def model(role: str, answer: Callable[[ModelRequest[Any]], Any]) -> FunctionModel:
        i, o = TOKENS[role]
        return FunctionModel(lambda r: Billed(answer(r), input_tokens=i, output_tokens=o),
                             name=f"t:{role}", price="unpriced" if role in unpriced else PRICE)
    return {"architect": model("architect", script.architect),
            "coder": model("coder", script.coder),
            "reviewer": model("reviewer", script.reviewer)}


def cost_of(role: str) -> float:
    i, o = TOKENS[role]
    return (i * PRICE.input + o * PRICE.output) / 1_000_000


async def test_a_run_with_a_send_back_counts_tokens_cost_calls_and_deliveries(
    nats_url: str, namespace: str, reader: InMemoryMetricReader,
) -> None:
    with anyio.fail_after(30):
        result, _ = await run_task(nats_url, namespace, team(billed(Script(buggy_first=True))))
    assert result.status == "approved" and result.code_revisions == 1, result.reason
    calls = {"architect": 1, "coder": 2, "reviewer": 2}
    tokens = "gen_ai.client.token.usage"
    for role, n in calls.items():
        i, o = TOKENS[role]
        who = {"gen_ai__agent__name": role, "gen_ai__request__model": role}
        assert total(reader, tokens, gen_ai__token__type="input", **who) == n * i
        assert total(reader, tokens, gen_ai__token__type="output", **who) == n * o
        assert count(reader, tokens, gen_ai__token__type="input", **who) == n
        assert count(reader, "gen_ai.client.operation.duration", **who) == n
        assert total(reader, COST_METRIC, **who) == pytest.approx(n * cost_of(role))
    # the attributes of a call, by the conventions (and ours: the step)
    (attrs, _), *_ = [p for p in points(reader, tokens)
                      if p[0]["gen_ai.agent.name"] == "coder"]
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "t"
    assert attrs["gen_ai.response.model"] == "coder" and attrs["swarmbus.step"] == "implement"
    # the cost adds up to what the result says was spent
    assert total(reader, COST_METRIC) == pytest.approx(result.total.cost_usd)
    assert result.total.cost_usd == pytest.approx(sum(n * cost_of(r) for r, n in calls.items()))
    assert points(reader, UNPRICED_METRIC) == []
    # every delivery handled, per agent, on the subject's template, not the workflow's
    consumed = "messaging.client.consumed.messages"
    assert {r: total(reader, consumed, gen_ai__agent__name=r) for r in calls} == calls
    (coder, _), *_ = [p for p in points(reader, consumed)
                      if p[0]["gen_ai.agent.name"] == "coder"]
    assert coder["messaging.destination.template"] == (
        f"swarm.{namespace}.{{workflow_id}}.step.implement")
    assert coder["messaging.system"] == "nats"
    assert coder["messaging.consumer.group.name"].startswith("coder")
    assert count(reader, "messaging.process.duration", gen_ai__agent__name="reviewer") == 2
    in_flight = "swarmbus.messages.in_flight"
    assert {a["gen_ai.agent.name"] for a, _ in points(reader, in_flight)} >= set(calls)
    assert all(p.value == 0 for _, p in points(reader, in_flight))
    assert points(reader, "swarmbus.messages.redelivered") == []
    # one outcome, by status and workflow name
    ((outcome, point),) = points(reader, OUTCOMES_METRIC)
    assert outcome == {"swarmbus.workflow.status": "approved",
                       "gen_ai.workflow.name": "code-review"} and point.value == 1
    # nothing unbounded: no workflow id or message id in any attribute
    for name in (tokens, consumed, COST_METRIC, OUTCOMES_METRIC, in_flight):
        for a, _ in points(reader, name):
            assert not any("wf1" in str(v) for v in a.values()), (name, a)


async def test_an_unpriced_model_adds_no_cost_and_counts_an_unpriced_call(
    nats_url: str, namespace: str, reader: InMemoryMetricReader,
) -> None:
    with anyio.fail_after(30):
        result, _ = await run_task(nats_url, namespace,
                                   team(billed(Script(), unpriced=("reviewer",))))
    assert result.status == "approved", result.reason
    assert result.total.unpriced_calls == 1 and result.total.cost_usd is None
    assert total(reader, COST_METRIC, gen_ai__agent__name="reviewer") == 0
    assert [a for a, _ in points(reader, COST_METRIC)
            if a["gen_ai.agent.name"] == "reviewer"] == []  # never 0 USD for unknown
    assert total(reader, UNPRICED_METRIC, gen_ai__agent__name="reviewer") == 1
    assert total(reader, UNPRICED_METRIC) == 1
    assert total(reader, COST_METRIC) == pytest.approx(result.total.priced_cost_usd)
    assert total(reader, "gen_ai.client.token.usage", gen_ai__agent__name="reviewer",
                 gen_ai__token__type="input") == TOKENS["reviewer"][0]


class CoderCrashingOnce(StepAgent):
    """Crashes after its model answered, on the first delivery only."""

    async def perform(self, call: StepCall) -> Any:
        answer = await super().perform(call)
        if call.ctx.deliveries == 1:
            raise RuntimeError("crash after the model answered")
        return answer


async def test_a_redelivery_is_counted_and_its_cached_answer_is_not_paid_twice(
    nats_url: str, namespace: str, reader: InMemoryMetricReader,
) -> None:
    fast = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=10, max_deliver=3, concurrency=4)
    agents = team(billed(Script()), consumers={"coder": fast},
                  classes={"coder": CoderCrashingOnce})
    with anyio.fail_after(30):
        result, _ = await run_task(nats_url, namespace, agents)
    assert result.status == "approved", result.reason
    assert total(reader, "swarmbus.messages.redelivered", gen_ai__agent__name="coder") == 1
    assert total(reader, "swarmbus.messages.redelivered") == 1
    consumed = "messaging.client.consumed.messages"
    assert total(reader, consumed, gen_ai__agent__name="coder") == 2
    assert total(reader, consumed, gen_ai__agent__name="coder",
                 error__type="RuntimeError") == 1  # the failed handling says why
    # the second delivery's answer came from the response cache: one call, paid once
    assert count(reader, "gen_ai.client.operation.duration", gen_ai__agent__name="coder") == 1
    assert total(reader, COST_METRIC) == pytest.approx(result.total.cost_usd)
    assert all(p.value == 0 for _, p in points(reader, "swarmbus.messages.in_flight"))
    assert total(reader, OUTCOMES_METRIC, swarmbus__workflow__status="approved") == 1


async def test_a_dead_letter_and_a_failed_outcome_are_counted(
    nats_url: str, namespace: str, reader: InMemoryMetricReader,
) -> None:
    with anyio.fail_after(30):
        async with Swarm(team(billed(Script())), nats=nats_url, namespace=namespace,
                         grace_s=3), await SwarmClient.connect(nats_url,
                                                               namespace=namespace) as client:
            await client.bus.publish_raw(subject(namespace, "bad1", topics.TASK),
                                         b"not json at all")
            result = await client.result("bad1")
    assert result.status == "failed", result.reason
    dead = points(reader, "swarmbus.messages.dead_lettered")
    assert [(a["messaging.consumer.group.name"].split("@")[0],
             a["swarmbus.dead_letter.reason"], p.value) for a, p in dead] == [
        ("architect", "undecodable", 1)]
    assert dead[0][0]["messaging.destination.template"] == (
        f"swarm.{namespace}.{{workflow_id}}.task")
    assert total(reader, "messaging.client.consumed.messages", gen_ai__agent__name="architect",
                 error__type="DecodeError") == 1
    assert total(reader, OUTCOMES_METRIC, swarmbus__workflow__status="failed") == 1
    assert all(p.value == 0 for _, p in points(reader, "swarmbus.messages.in_flight"))


def test_without_an_sdk_metrics_are_no_ops() -> None:
    """The API alone: every instrument is the proxy's no-op (the tracing test runs a
    whole team in a process without an SDK, so nothing here needs the bus)."""
    from swarmbus.bus import model_call, workflow_outcome
    from swarmbus.protocols import Provenance

    assert type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"
    model_call(Provenance(provider="t", model="m", input_tokens=5, cost_usd=None))
    workflow_outcome("approved", "w")  # nothing to read, nothing raised


def test_up_exports_metrics_only_when_asked_and_only_with_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert configure_metrics() is None  # nothing asked: nothing installed
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert configure_metrics() is None
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.metrics", None)  # the extra missing
    line = configure_metrics()
    assert line is not None and "pip install 'swarmbus[otel]'" in line
    assert type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"


@pytest.mark.parametrize(("variables", "exporter"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
      "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "OTLPMetricExporter"),
    ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:9"}, "OTLPMetricExporter"),
    ({"OTEL_METRICS_EXPORTER": "console"}, "ConsoleMetricExporter"),
])
def test_up_installs_the_metric_exporter_the_variables_name(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], exporter: str,
) -> None:
    for var in ("OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.delenv(var, raising=False)
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    try:
        assert configure_metrics() == f"metrics exported with {exporter}"
        provider = metrics.get_meter_provider()
        assert isinstance(provider, MeterProvider)
        assert provider._sdk_config.resource.attributes["service.name"] == "swarmbus"
    finally:
        provider = metrics.get_meter_provider()
        if isinstance(provider, MeterProvider):
            provider.shutdown()
        metrics_state._METER_PROVIDER = None
        metrics_state._METER_PROVIDER_SET_ONCE = Once()

