"""OpenTelemetry traces across processes, against a real nats-server with scripted
models: one trace from submit to result when each role runs in its own process (its
spans exported by the SDK to a file), the GenAI attributes with the tokens and cost
billed, no content unless opted in, a redelivery as a sibling span, a raw task's
``traceparent`` honoured, and nothing exported (nothing broken) without an SDK."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from _run_helpers import swarmbus_cmd
from _team_helpers import ADD_OK, ADD_TEST, DESIGN_V1, GOAL, Script, run_task, team
from _trace_helpers import read_spans, run_noop, span_record, spawn_traced_role
from _vendor_fakes import FakeServer, Seen, anthropic_body, gemini_body, openai_body
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once
from pydantic import BaseModel

from swarmbus.agents.models import (
    Ledger,
    Model,
    ModelRequest,
    ModelResponse,
    ModelSpec,
    block_real_models,
    build_model,
    current_ledger,
    metered,
)
from swarmbus.agents.workflow import StepAgent, StepCall
from swarmbus.bus import (
    COST_ATTRIBUTE,
    ConsumerSettings,
    SwarmClient,
    configure_tracing,
    encode,
)
from swarmbus.protocols import (
    Code,
    Component,
    Design,
    Meta,
    SourceFile,
    TaskRequest,
    Verdict,
    subject,
    topics,
)

T = TypeVar("T", bound=BaseModel)
Span = dict[str, Any]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"

pytestmark = pytest.mark.anyio


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK in this process, its spans kept in memory; the global provider is reset
    after the test (so the rest of the session runs without an SDK, as by default)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()


@pytest.fixture
def spans_reset() -> Iterator[None]:
    """Whatever provider the test installs is shut down and the global reset after it."""
    yield
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()


def records(exporter: InMemorySpanExporter) -> list[Span]:
    return [span_record(s) for s in exporter.get_finished_spans()]


def named(spans: list[Span], prefix: str) -> list[Span]:
    return [s for s in spans if s["name"].startswith(prefix)]


class Billed(Model):
    """Wraps a model and reports fixed tokens and cost per call, booked into the ledger
    in place of the inner model's free call (``cost_usd=None``: an unpriced model)."""

    def __init__(self, inner: Model, cost_usd: float | None, tokens: tuple[int, int, int, int]
                 ) -> None:
        self.inner, self.name, self.cost_usd, self.tokens = inner, inner.name, cost_usd, tokens

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        outer = current_ledger()
        with metered(Ledger()):
            r = await self.inner.complete(request)
        i, o, read, write = self.tokens
        prov = r.provenance.model_copy(update={
            "cost_usd": self.cost_usd, "input_tokens": i, "output_tokens": o,
            "cached_tokens": read, "cache_write_tokens": write})
        if outer is not None:
            outer.record(prov)
        return replace(r, provenance=prov)


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    while proc.poll() is None:
        await anyio.sleep(0.02)
    return proc.returncode


async def test_one_trace_across_role_processes(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]],
    spans: InMemorySpanExporter,
) -> None:
    files = {r: tmp_path / f"{r}.spans" for r in ("architect", "coder", "reviewer")}
    for role, f in files.items():
        procs.append(spawn_traced_role(role, f, nats_url, namespace, tmp_path / f"{role}.log",
                                       buggy_first=True))
    with anyio.fail_after(40):
        async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
            wf = await client.submit(TaskRequest(goal=GOAL))
            result = await client.result(wf)
            trail = await client.trail(wf)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [await wait_exit(p) for p in procs]
    assert codes == [0, 0, 0]
    assert result.status == "approved" and result.code_revisions == 1, result.reason

    (root,) = records(spans)
    # no daemon stored its workflows in this namespace: the daemon's default
    assert root["name"] == "invoke_workflow default"
    assert root["attributes"]["gen_ai.operation.name"] == "invoke_workflow"
    assert root["kind"] == "PRODUCER" and root["parent_id"] is None
    remote = {r: read_spans(f) for r, f in files.items()}
    every = [root, *(s for ss in remote.values() for s in ss)]
    # one trace, however many processes served it
    assert {s["trace_id"] for s in every} == {root["trace_id"]}
    assert len({s["pid"] for s in every}) == 4
    # every message of the trail (the task and each step's output) carries it too
    assert all(s.headers["traceparent"].split("-")[1] == root["trace_id"] for s in trail)

    agents = sorted(named(every, "invoke_agent "), key=lambda s: len(chain(s, every)))
    assert [s["name"] for s in agents] == [
        "invoke_agent architect", "invoke_agent coder", "invoke_agent reviewer",
        "invoke_agent coder", "invoke_agent reviewer"]
    assert all(s["kind"] == "CONSUMER" for s in agents)
    # the parent chain: task -> architect -> coder -> reviewer -> (send-back) coder ->
    # reviewer, each hop through the PRODUCER span of the output that carried the work
    assert agents[0]["parent_id"] == root["span_id"]
    ids = {s["span_id"]: s for s in every}
    for parent, child in itertools.pairwise(agents):
        send = ids[child["parent_id"]]
        assert send["kind"] == "PRODUCER" and send["parent_id"] == parent["span_id"]
        a = send["attributes"]
        assert send["name"] == f"send {a['messaging.destination.template']}"
        assert a["messaging.operation.type"] == "send" and a["messaging.system"] == "nats"
        assert a["messaging.message.id"] == child["attributes"]["messaging.message.id"]
        assert a["messaging.destination.name"] == child["attributes"][
            "messaging.destination.name"]
        assert a["messaging.destination.template"] == (
            f"swarm.{namespace}.{{workflow_id}}." + a["messaging.destination.name"].split(
                ".", 3)[3])
    # the result too has its PRODUCER span, under the last reviewer's
    (result_send,) = [s for s in named(every, "send ") if s["name"].endswith(".result")]
    assert result_send["parent_id"] == agents[-1]["span_id"]
    assert result_send["attributes"]["messaging.message.id"] == trail[-1].headers["Nats-Msg-Id"]
    assert agents[1]["attributes"]["messaging.destination.name"].endswith(".step.implement")
    assert agents[0]["attributes"]["messaging.system"] == "nats"
    # the first review sends the code back: its verdict event names the finding
    (event,) = agents[2]["events"]
    assert event["name"] == "swarmbus.verdict"
    assert event["attributes"]["swarmbus.verdict"] == "revise_code"
    assert "coder" in event["attributes"]["swarmbus.findings.target"]
    # the sandbox run is a span under the reviewer's step: failed, then passed
    runs = named(every, "execute_tool sandbox.pytest")
    by_parent = {s["parent_id"]: s["attributes"] for s in runs}
    assert by_parent[agents[2]["span_id"]]["swarmbus.tests.failed"] == 1
    assert by_parent[agents[4]["span_id"]]["swarmbus.tests.ok"] is True
    chats = named(every, "chat ")
    assert {c["parent_id"] for c in chats} == {a["span_id"] for a in agents}


def chain(span: Span, every: list[Span]) -> list[Span]:
    """``span``'s ancestors, nearest first."""
    ids = {s["span_id"]: s for s in every}
    out: list[Span] = []
    while span["parent_id"] in ids:
        span = ids[span["parent_id"]]
        out.append(span)
    return out


async def test_chat_spans_carry_tokens_and_cost_and_no_content(
    nats_url: str, namespace: str, spans: InMemorySpanExporter,
) -> None:
    models: dict[str, Model] = dict(Script().models())
    models["coder"] = Billed(models["coder"], 0.0125, (1200, 340, 800, 150))
    models["reviewer"] = Billed(models["reviewer"], None, (500, 60, 0, 0))
    with anyio.fail_after(20):
        result, _ = await run_task(nats_url, namespace, team(models, cache_ttl_s=None))
    assert result.status == "approved", result.reason
    got = records(spans)
    (coder,) = named(got, "chat coder")
    a = coder["attributes"]
    assert coder["kind"] == "CLIENT"
    assert a["gen_ai.operation.name"] == "chat"
    assert (a["gen_ai.provider.name"], a["gen_ai.request.model"], a["gen_ai.response.model"]
            ) == ("t", "coder", "coder")
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"],
            a["gen_ai.usage.cache_read.input_tokens"],
            a["gen_ai.usage.cache_creation.input_tokens"]) == (1200, 340, 800, 150)
    assert a[COST_ATTRIBUTE] == pytest.approx(0.0125)
    (reviewer,) = named(got, "chat reviewer")
    assert reviewer["attributes"]["gen_ai.usage.input_tokens"] == 500
    assert COST_ATTRIBUTE not in reviewer["attributes"]  # unpriced: absent, never 0
    # no prompt or output content by default
    for s in got:
        assert not any(k.startswith(("gen_ai.input", "gen_ai.output.messages",
                                     "gen_ai.system_instructions")) for k in s["attributes"])
        assert GOAL not in repr(s)


async def test_content_only_with_the_opt_in_switch(
    nats_url: str, namespace: str, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    with anyio.fail_after(20):
        result, _ = await run_task(nats_url, namespace, team(Script().models()))
    assert result.status == "approved", result.reason
    (architect,) = named(records(spans), "chat architect")
    assert GOAL in architect["attributes"]["gen_ai.input.messages"]
    assert "sums two numbers" in architect["attributes"]["gen_ai.output.messages"]


class CoderCrashingOnce(StepAgent):
    """Crashes after its model answered, on the first delivery only."""

    async def perform(self, call: StepCall) -> Any:
        answer = await super().perform(call)
        if call.ctx.deliveries == 1:
            raise RuntimeError("crash after the model answered")
        return answer


async def test_redelivery_is_a_sibling_span(
    nats_url: str, namespace: str, spans: InMemorySpanExporter,
) -> None:
    fast = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=10, max_deliver=3, concurrency=4)
    agents = team(Script().models(), consumers={"coder": fast},
                  classes={"coder": CoderCrashingOnce})
    with anyio.fail_after(20):
        result, _ = await run_task(nats_url, namespace, agents)
    assert result.status == "approved", result.reason
    got = records(spans)
    first, second = sorted(named(got, "invoke_agent coder"),
                           key=lambda s: s["attributes"]["messaging.message.delivery_count"])
    assert first["attributes"]["messaging.message.delivery_count"] == 1
    assert second["attributes"]["messaging.message.delivery_count"] == 2
    assert first["parent_id"] == second["parent_id"]  # siblings under the architect's send
    (architect,) = named(got, "invoke_agent architect")
    ids = {s["span_id"]: s for s in got}
    assert ids[first["parent_id"]]["kind"] == "PRODUCER"
    assert ids[first["parent_id"]]["parent_id"] == architect["span_id"]
    assert first["attributes"]["messaging.message.id"] == (
        second["attributes"]["messaging.message.id"])
    (reviewer,) = named(got, "invoke_agent reviewer")
    # the answer came from the second delivery: through its PRODUCER span
    assert ids[reviewer["parent_id"]]["parent_id"] == second["span_id"]


async def test_raw_task_with_traceparent_joins_the_callers_trace(
    nats_url: str, namespace: str, spans: InMemorySpanExporter,
) -> None:
    traceparent = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
    models = Script().models()
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
        body, hdrs = encode(TaskRequest(goal=GOAL), Meta("task-raw1", sender="other-service"))
        hdrs["traceparent"] = traceparent
        with anyio.fail_after(20):
            from swarmbus.agents import Swarm

            async with Swarm(team(models), nats=nats_url, namespace=namespace, grace_s=3):
                # published while a span of ours is current: the header given wins
                with trace.get_tracer("test").start_as_current_span("unrelated"):
                    await client.bus.publish_raw(subject(namespace, "raw1", topics.TASK),
                                                 body, hdrs)
                result = await client.result("raw1")
                trail = await client.trail("raw1")
    assert result.status == "approved", result.reason
    assert trail[0].headers["traceparent"] == traceparent  # kept as the caller sent it
    got = records(spans)
    (architect,) = named(got, "invoke_agent architect")
    assert architect["trace_id"] == TRACE_ID and architect["parent_id"] == CALLER_SPAN
    assert {s["trace_id"] for s in got if s["name"] != "unrelated"} == {TRACE_ID}


async def test_a_dead_letter_is_sent_in_its_messages_trace(
    nats_url: str, namespace: str, spans: InMemorySpanExporter,
) -> None:
    """A message no agent can read is dead-lettered after its handler gave up (outside
    any span): the dead letter's PRODUCER span is still a child of the message's sender,
    and the supervisor's span handling the dead letter a child of that."""
    traceparent = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
        with anyio.fail_after(20):
            from swarmbus.agents import Swarm

            async with Swarm(team(Script().models()), nats=nats_url, namespace=namespace,
                             grace_s=3):
                await client.bus.publish_raw(subject(namespace, "bad1", topics.TASK),
                                             b"not json", {"traceparent": traceparent})
                result = await client.result("bad1")
                trail = await client.trail("bad1")
    assert result.status == "failed", result.reason
    got = records(spans)
    (send,) = [s for s in named(got, "send ") if s["name"].endswith(".deadletter")]
    assert send["kind"] == "PRODUCER"
    assert send["trace_id"] == TRACE_ID and send["parent_id"] == CALLER_SPAN
    (letter,) = [m for m in trail if m.subject.endswith(".deadletter")]
    assert letter.headers["traceparent"].split("-")[2] == send["span_id"]
    (supervisor,) = named(got, "invoke_agent supervisor")
    assert supervisor["parent_id"] == send["span_id"]


def vendor_answer(seen: Seen) -> dict[str, Any]:
    """The team behind three vendors (Gemini designs, GPT codes, Claude reviews), each
    stopping with a reason in its own words."""
    if seen.vendor == "google":
        design = Design(summary=DESIGN_V1, components=[
            Component(name="add", responsibility="sums two numbers")], files=["calc.py"])
        return gemini_body(design.model_dump_json(), finish_reason="STOP")
    if seen.vendor == "openai":
        code = Code(files=[SourceFile(path="calc.py", content=ADD_OK),
                           SourceFile(path="test_calc.py", content=ADD_TEST)])
        return openai_body(code.model_dump_json(), finish_reason="stop")
    return anthropic_body(Verdict(decision="approve", summary="fine").model_dump_json(),
                          stop_reason="end_turn")


async def test_chat_spans_carry_each_vendors_finish_reasons(
    nats_url: str, namespace: str, spans: InMemorySpanExporter, fake_keys: str,
) -> None:
    with FakeServer(responder=vendor_answer) as fake, block_real_models(False):
        models = {role: build_model(ModelSpec(name=name, base_url=fake.url + suffix,
                                              max_retries=0))
                  for role, name, suffix in (("architect", "google:gemini-2.5-pro", ""),
                                             ("coder", "openai:gpt-4o", "/v1"),
                                             ("reviewer", "anthropic:claude-haiku-4-5", ""))}
        with anyio.fail_after(30):
            result, _ = await run_task(nats_url, namespace, team(models))
    assert result.status == "approved", result.reason
    assert [s.vendor for s in fake.requests] == ["google", "openai", "anthropic"]
    reasons = {s["attributes"]["gen_ai.provider.name"]:
               s["attributes"]["gen_ai.response.finish_reasons"]
               for s in named(records(spans), "chat ")}
    assert reasons == {"gcp.gen_ai": ("STOP",), "openai": ("stop",),
                       "anthropic": ("end_turn",)}


async def test_without_an_sdk_nothing_is_exported_and_nothing_breaks(
    nats_url: str, namespace: str,
) -> None:
    with anyio.fail_after(60):
        out = await anyio.to_thread.run_sync(run_noop, nats_url, namespace)
    assert out["status"] == "approved"
    assert out["provider"] == "ProxyTracerProvider"  # the API's default: a no-op
    assert out["meter_provider"] == "_ProxyMeterProvider"  # metrics too: recorded, to nowhere
    assert out["sdk_loaded"] is False
    assert out["messages"] >= 6 and out["traceparents"] == 0


def test_up_exports_only_when_asked_and_only_with_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert configure_tracing() is None  # nothing asked: nothing installed
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert configure_tracing() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # the extra missing
    line = configure_tracing()
    assert line is not None and "pip install 'swarmbus[otel]'" in line
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"


def test_up_installs_the_exporter_the_variables_name(
    monkeypatch: pytest.MonkeyPatch, spans_reset: None,
) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert configure_tracing() == "traces exported with OTLPSpanExporter"
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "swarmbus"


async def test_swarmbus_submit_starts_the_trace_when_the_variables_ask(
    nats_url: str, namespace: str
) -> None:
    """The command line's submit installs the SDK as `up` does: its task carries the
    `invoke_workflow` span's context, which the console exporter printed."""
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console"}
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
        done = await anyio.run_process(
            [*swarmbus_cmd(), "submit", GOAL, "--no-wait", "--id", "cli1", "--nats", nats_url,
             "--namespace", namespace], env=env, check=False)
        task = await client.bus.last("cli1", topics.TASK)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "traces exported with ConsoleSpanExporter" in done.stderr.decode()
    assert task is not None
    trace_id = task.headers["traceparent"].split("-")[1]
    printed = done.stdout.decode()
    assert '"name": "invoke_workflow' in printed and f'"trace_id": "0x{trace_id}"' in printed
