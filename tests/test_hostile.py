"""Hostile input against a running swarm: nothing crashes, nothing is lost.

Hypothesis generates >10,000 inputs (garbage bytes, JSON of the wrong shape or type,
missing, wrong and unknown ``Swarm-Type`` headers, junk headers, oversize bodies,
deeply nested JSON, odd unicode, unknown fields, other namespaces, malformed
subjects). They are published concurrently on every topic of a namespace where the
offline team (architect, coder, reviewer) and two custom agents (an auditor on a
custom topic, a notifier reading ``result``) run. Then every input is accounted for:

- rejected at the edge: the publish is refused (no stream for that subject, invalid
  subject, over the maximum payload, a JetStream header the stream refuses);
- dead-lettered with a reason (``deadletter`` message carrying its stream sequence);
- processed: a valid message has its downstream output (causation id) or was seen
  by the notifier;
- inert: stored on a subject no agent subscribes to (it stays in the audit trail).

What each input *should* get is computed independently of the codec (the subject,
the header and a plain pydantic validation of the body), and must match what it got.
No input may take the retry path (a handler crashing on it), every message the swarm
published must decode, and a valid task submitted after the barrage is approved.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import anyio
import nats.errors
import nats.js.errors
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from pydantic import Field, ValidationError

from swarmbus.agents import Agent, Context, Swarm, handles
from swarmbus.agents.app import build_agents, load_config
from swarmbus.bus import Bus, ConsumerSettings, Delivery, SwarmClient, cancel_flags
from swarmbus.protocols import (
    AgentAnnouncement,
    DeadLetter,
    Message,
    Subject,
    SubjectError,
    TaskRequest,
    TaskResult,
    Work,
    headers,
    message_type,
    registry,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

BATCH = 10
EXAMPLES = 205  # x BATCH x 5 header variants = 10,250 inputs
MAX_BODY = 16 * 1024  # the agents' max_body_bytes here: larger bodies are dead-lettered
MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload and the stream's max_msg_size


@message_type("hostile.AuditRequest", topics=("hostile_audit",))
class AuditRequest(Message):
    text: str = Field(max_length=10_000)


@message_type("hostile.AuditReport", topics=("hostile_audit.report",))
class AuditReport(Message):
    chars: int


FAST = ConsumerSettings(concurrency=32, max_deliver=2, retry_delay_s=0.2, max_body_bytes=MAX_BODY)


class Auditor(Agent):
    """A custom agent on a custom topic: reads ``audit``, publishes ``audit.report``."""

    name = "auditor"
    consumer = FAST

    @handles("hostile_audit")
    async def on_audit(self, msg: AuditRequest, ctx: Context[AuditRequest]) -> None:
        await ctx.publish(AuditReport(chars=len(msg.text)))


class Notifier(Agent):
    """A custom agent reading ``result`` (it records what it saw, publishes nothing)."""

    name = "notifier"
    consumer = FAST

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    @handles("result")
    async def on_result(self, msg: TaskResult, ctx: Context[TaskResult]) -> None:
        self.seen.add(ctx.envelope.msg_id)


ROLES = ("architect", "coder", "reviewer")
CONSUMED: dict[str, type[Message]] = {
    "task": TaskRequest, "step.design": Work, "step.implement": Work, "step.review": Work,
    "hostile_audit": AuditRequest, "result": TaskResult,
}
TOPICS = [*CONSUMED, "deadletter", "hostile_audit.report", "zzz", "task.extra", "step.zzz",
          "step.review.x"]

# -- strategies ------------------------------------------------------------------------------

ODD = ["\x00", "\u202e", "\u200f", "\u2066", "\ufeff", "\uffff", "😀", "é", "\u0301",
       "\U0001f469\u200d\U0001f467", "\n", "\t", "\\", '"', "\U0001d518", "\U0010ffff"]
odd_text = st.lists(st.characters() | st.sampled_from(ODD), max_size=12).map("".join)
header_text = st.lists(st.characters(codec="utf-8", exclude_characters="\r\n")
                       | st.sampled_from(ODD[:8]), max_size=20).map("".join)
lone_surrogate = st.characters(categories=["Cs"])
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), odd_text,
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=4,
)
extras = st.dictionaries(odd_text.map(lambda s: "x_" + s), json_value, max_size=2)
extreme_float = st.sampled_from([0.0, 1e-300, 1e15, 1e300, 1.7e308, 1e400, -1.0, -0.0])
extreme_int = st.sampled_from([0, 1, -1, 2**31, 2**63, 10**30, 10**4000])
extreme_dt = st.sampled_from([
    "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59-12:00",
    "9999-12-31T23:59:59.999999", "2000-02-29T12:00:00Z", "1970-01-01T00:00:00Z",
])


@st.composite
def task_json(draw: st.DrawFn, *, extreme: bool = False) -> dict[str, Any]:
    """A task whose budget is already spent, so roles end it without a model call."""
    limits: dict[str, Any] = {"budget_usd": 0}
    if extreme:
        for key in sorted(draw(st.sets(st.sampled_from(
                ["budget_usd", "timeout_s", "max_code_revisions", "max_design_revisions",
                 "deadline"]), min_size=2))):  # sorted: set order varies between processes
            limits[key] = draw(
                extreme_dt if key == "deadline"
                else extreme_int if key.startswith("max_") else extreme_float
            )
    return {"goal": draw(odd_text.filter(bool)), "limits": limits,
            "constraints": draw(st.lists(odd_text, max_size=2)), **draw(extras)}


@st.composite
def state_json(draw: st.DrawFn, *, extreme: bool = False) -> dict[str, Any]:
    state: dict[str, Any] = {"task": draw(task_json(extreme=extreme)), "budget_usd": 0,
                             **draw(extras)}
    if extreme:
        state["round"] = draw(extreme_int)
        state["deadline"] = draw(extreme_dt)
        state["budget_usd"] = draw(extreme_float)
        state["spend"] = {role: {"cost_usd": draw(extreme_float), "calls": draw(extreme_int)}
                          for role in sorted(draw(st.sets(st.sampled_from(ROLES),
                                                          min_size=1)))}
    if draw(st.booleans()):
        state["artifacts"] = {"code": {"files": [{"path": draw(odd_text),
                                                  "content": draw(odd_text)}]}}
    return state


@st.composite
def valid_json(draw: st.DrawFn, cls: type[Message], *, extreme: bool = False) -> dict[str, Any]:
    """A body of type ``cls`` (valid unless ``extreme`` values are out of range)."""
    if cls is TaskRequest:
        return draw(task_json(extreme=extreme))
    if cls is TaskResult:
        return {"status": draw(st.sampled_from(["approved", "failed", "cancelled"])),
                "reason": draw(odd_text), **draw(extras)}
    if cls is AuditRequest:
        return {"text": draw(odd_text), **draw(extras)}
    body: dict[str, Any] = {"state": draw(state_json(extreme=extreme)), **draw(extras)}
    if draw(st.booleans()):
        body["source"] = draw(st.sampled_from(["review", "design", "implement", "x"]))
        body["edge"] = draw(odd_text)
    return body


def dumps(obj: Any, ascii_: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_).encode("utf-8", "surrogatepass")


@st.composite
def body_for(draw: st.DrawFn, cls: type[Message]) -> tuple[str, bytes]:
    kind = draw(st.sampled_from([
        "garbage", "text", "scalar", "array", "other_type", "valid", "valid", "extreme",
        "extreme", "extreme", "nested", "surrogate", "unicode", "empty", "oversize",
    ]))
    ascii_ = draw(st.booleans())
    if kind == "garbage":
        return kind, draw(st.binary(max_size=300))
    if kind == "text":
        return kind, draw(st.text(max_size=80)).encode("utf-8", "surrogatepass")
    if kind == "scalar":
        return kind, dumps(draw(json_scalar), ascii_)
    if kind == "array":
        return kind, dumps(draw(st.lists(json_value, max_size=4)), ascii_)
    if kind == "other_type":
        other = draw(st.sampled_from([c for c in CONSUMED.values() if c is not cls]
                                     + [DeadLetter, AgentAnnouncement]))
        if other is DeadLetter:
            return kind, dumps({"subject": "x", "error": "e", "reason": "invalid"}, ascii_)
        if other is AgentAnnouncement:
            return kind, dumps({"agent": "a", "instance": "i", "topics": [], "namespace": "n",
                                "started_at": "2020-01-01T00:00:00Z"}, ascii_)
        return kind, dumps(draw(valid_json(other)), ascii_)
    if kind in ("valid", "unicode"):
        obj = draw(valid_json(cls))
        if kind == "unicode":  # NUL, RTL, emoji, a BOM in the first string field
            obj = {k: (draw(st.sampled_from(ODD)) * 3 + v if isinstance(v, str) else v)
                   for k, v in obj.items()}
        return kind, dumps(obj, ascii_)
    if kind == "extreme":
        return kind, dumps(draw(valid_json(cls, extreme=True)), ascii_)
    if kind == "nested":
        depth = draw(st.sampled_from([50, 120, 300, 5_000]))
        inner = "[" * depth + "]" * depth
        if draw(st.booleans()):
            return kind, inner.encode()
        obj = draw(valid_json(cls))
        text = json.dumps(obj)
        return kind, (text[:-1] + f', "x_deep": {inner}}}').encode()
    if kind == "surrogate":  # an escaped lone surrogate inside an otherwise valid body
        obj = draw(valid_json(cls))
        obj["x_s"] = "a" + draw(lone_surrogate) + "b"
        return kind, dumps(obj, True)
    if kind == "oversize":
        size = draw(st.sampled_from([MAX_BODY + 1, 20_000, 40_000, 2 * MAX_BODY, 70_000,
                                     100_000, 200_000, 0]))
        if size == 0:  # one in eight: at the server's limit (a megabyte each); over it,
            # the client refuses before sending (cheap), so those are drawn more often
            size = draw(st.sampled_from([MAX_PAYLOAD - 300, MAX_PAYLOAD, MAX_PAYLOAD + 1,
                                         MAX_PAYLOAD + 1000]))
        obj = draw(valid_json(cls))
        text = json.dumps(obj)[:-1] + ', "x_pad": "'
        return kind, (text + "p" * max(0, size - len(text) - 2) + '"}').encode()
    assert kind == "empty"
    return kind, b""


CANCELLED = ["cancelled-0", "cancelled-1", "cancelled-2"]
"""Workflows cancelled before the barrage (extreme but valid messages end there)."""
GOOD_WF = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_-", min_size=1,
                  max_size=24)
BAD_WF = st.sampled_from(["*", "é", "a" * 129, "wf\x00", "%", "ñ😀", "a=b", "\u202e"])


@st.composite
def subject_for(draw: st.DrawFn, ns: str) -> tuple[str, str, str | None, bool]:
    """(kind, subject, topic if it is ours, whether the workflow id is valid)."""
    kind = draw(st.sampled_from(
        ["own"] * 12 + ["bad_wf", "wildcard", "tokens", "other_ns", "malformed"]))
    topic = draw(st.sampled_from(TOPICS))
    if kind == "own":
        return kind, f"swarm.{ns}.{draw(GOOD_WF)}.{topic}", topic, True
    if kind == "bad_wf":
        return kind, f"swarm.{ns}.{draw(BAD_WF)}.{topic}", topic, False
    if kind == "wildcard":
        return kind, draw(st.sampled_from(
            [f"swarm.{ns}.*.{topic}", f"swarm.{ns}.wf.*", f"swarm.{ns}.wf.>", f"swarm.{ns}.>"])
        ), None, False
    if kind == "tokens":
        return kind, draw(st.sampled_from(
            [f"swarm.{ns}.wf", f"swarm.{ns}.wf.{topic}.extra.more",
             f"swarm.{ns}.wf.a.b.c.d.e.f.g.h.i", f"swarm.{ns}.wf.{topic}\x00"])), None, True
    if kind == "other_ns":
        other = draw(st.sampled_from(["default", "o" + ns[1:], ns.upper(), "x"]))
        return kind, draw(st.sampled_from(
            [f"swarm.{other}.wf.{topic}", f"SWARM.{ns}.wf.{topic}", f"swarmx.{ns}.wf.{topic}",
             f"{topic}", f"swarm_{ns}.wf.{topic}"])), None, True
    return kind, draw(st.sampled_from(
        [f"swarm.{ns}.w f.{topic}", f"swarm.{ns}.wf\t.{topic}", f"swarm.{ns}..{topic}",
         f"swarm.{ns}.wf.{topic}.", f".swarm.{ns}.wf.{topic}", "", " ",
         f"swarm.{ns}.wf\r\n.{topic}"])), None, True


OUR_TYPES = sorted(
    c.swarm_type for c in registry if c.swarm_type.startswith(("swarmbus.", "hostile.")))
"""Not the whole registry: other test modules register types too, and the corpus must not
depend on which ones were imported."""
HEADER_KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC-_0123456789", min_size=1,
                     max_size=12)


@st.composite
def header_variants(draw: st.DrawFn, topic: str | None) -> list[tuple[str, dict[str, str]]]:
    """The same input is sent five ways: without headers, with a message id, with the
    topic's type (or another known type), with an unknown type, and with junk headers
    (or JetStream headers the stream refuses)."""
    typed = CONSUMED[topic].swarm_type if topic in CONSUMED and draw(st.booleans()) else draw(
        st.sampled_from(OUR_TYPES))
    unknown = draw(st.sampled_from(
        ["swarmbus.TaskRequest/2", "swarmbus.TaskRequest", "nope", "é😀/1", "x" * 2000, " "]))
    junk = draw(st.dictionaries(
        HEADER_KEY | st.sampled_from([headers.ROUND, headers.SENDER, headers.CAUSATION_ID,
                                      headers.MODEL, "swarm-type", "Status", "Description"]),
        header_text, min_size=1, max_size=4))
    refused = draw(st.sampled_from([
        {"Nats-Expected-Stream": "NOPE"}, {"Nats-Expected-Last-Sequence": "1"},
        {"Nats-Expected-Last-Msg-Id": "nope"}, {"Nats-Rollup": "all"}]))
    last = ("js_refused", refused) if draw(st.integers(0, 9)) == 0 else ("junk", junk)
    return [("none", {}), ("msgid", {}), ("type", {headers.TYPE: typed}),
            ("type_unknown", {headers.TYPE: unknown}), last]


@dataclass(frozen=True, slots=True)
class Hostile:
    kind: str
    subject: str
    body: bytes
    headers: dict[str, str]
    expect: frozenset[str]


def would_validate(cls: type[Message], body: bytes) -> bool:
    try:
        cls.model_validate_json(body)
    except (ValidationError, ValueError, RecursionError):
        return False
    return True


def _expect(skind: str, mode: str, topic: str | None, wf_ok: bool, hdrs: dict[str, str],
            body: bytes) -> set[str]:
    if skind in ("malformed", "other_ns"):
        return {"edge:bad_subject", "edge:no_stream"}
    if mode == "js_refused":
        return {"edge:refused"}
    if skind == "wildcard":
        # A consumer whose filter takes the literal "*" token decodes it: the codec checks
        # the body size before the subject, so an oversize body is dead-lettered as such.
        return {"inert", "dl:invalid"} | ({"dl:oversize"} if len(body) > MAX_BODY else set())
    if skind == "tokens" or topic not in CONSUMED:
        return {"inert"}
    if len(body) > MAX_BODY:
        return {"dl:oversize"}
    if not wf_ok:
        return {"dl:invalid"}
    type_name = hdrs.get(headers.TYPE, "").strip()  # NATS strips header values
    target = registry.get(type_name) if type_name else CONSUMED[topic]
    if target is None:
        return {"dl:unknown_type"}
    if not would_validate(target, body):
        return {"dl:undecodable", "dl:invalid"}
    if target is not CONSUMED[topic]:
        return {"dl:invalid"}
    if target is TaskRequest:  # a workflow id is single-use: a different task is refused
        return {"processed", "dl:id_taken"}
    return {"processed"}


def _budget(obj: dict[str, Any]) -> object:
    if "state" in obj:
        state = obj["state"]
        task = state.get("task", {})
        return max(state.get("budget_usd", 0), task.get("limits", {}).get("budget_usd", 0))
    return obj.get("limits", {}).get("budget_usd", 0) if "goal" in obj else 0


@st.composite
def hostile(draw: st.DrawFn, ns: str) -> list[Hostile]:
    """One input sent five ways, and what must become of each (from the wire contract:
    subject, headers, and whether the body validates as the type they name)."""
    skind, subj, topic, wf_ok = draw(subject_for(ns))
    cls = CONSUMED.get(topic or "", TaskRequest)
    bkind, body = draw(body_for(cls))
    if bkind == "extreme" and skind == "own" and _budget(json.loads(body)) != 0:
        # It would call models: let it end at the limits check, as cancelled.
        subj = f"swarm.{ns}.{draw(st.sampled_from(CANCELLED))}.{topic}"
    out = []
    for mode, hdrs in draw(header_variants(topic)):
        size = len(body) + header_bytes(hdrs) + 256
        expect = _expect(skind, mode, topic, wf_ok, hdrs, body)
        if len(body) > MAX_PAYLOAD:  # refused by the client library, unless the subject is
            expect = {"edge:max_payload"} | (expect & {"edge:bad_subject", "edge:no_stream"})
        if len(body) <= MAX_PAYLOAD < size:  # headers and body together: either side
            expect |= {"edge:max_payload", "edge:refused"}
        out.append(Hostile(f"{skind}/{mode}/{bkind}", subj, body, hdrs, frozenset(expect)))
    return out


def generate(ns: str) -> list[Hostile]:
    out: list[Hostile] = []

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(hostile(ns), min_size=BATCH, max_size=BATCH))
    def collect(batch: list[list[Hostile]]) -> None:
        for variants in batch:
            out.extend(variants)

    collect()
    # Generation is random in how often it reaches the server's payload limit: a few
    # inputs over it, fixed, so that class is always there.
    big = b'{"goal": "' + b"p" * MAX_PAYLOAD + b'"}'
    for i, hdrs in enumerate([{}, {headers.TYPE: TaskRequest.swarm_type}, {"x": "y"}] * 2):
        out.append(Hostile(f"own/fixed{i}/over_max_payload", f"swarm.{ns}.big{i}.task", big,
                           hdrs, frozenset({"edge:max_payload"})))
    return out


# -- the barrage -----------------------------------------------------------------------------


def workflow_of(subject: str) -> str:
    try:
        return Subject.parse(subject).workflow_id
    except SubjectError:
        return ""


def _topic(subject: str) -> str:
    try:
        return Subject.parse(subject).topic
    except SubjectError:
        return ""


@dataclass(slots=True)
class Sent:
    item: Hostile
    msg_id: str = ""
    seq: int = 0
    edge: str = ""


def header_bytes(hdrs: dict[str, str]) -> int:
    return len(b"NATS/1.0\r\n\r\n") + sum(len(k) + len(v.encode()) + 4 for k, v in hdrs.items())


async def publish(bus: Bus, sent: Sent, index: int) -> None:
    hdrs = dict(sent.item.headers)
    if "/msgid/" in sent.item.kind or "/junk/" in sent.item.kind:
        hdrs[headers.MSG_ID] = f"hostile-{index}"
    item = sent.item
    if len(item.body) <= MAX_PAYLOAD < len(item.body) + header_bytes(hdrs) + 256:
        # nats-py checks the body alone; the server counts the headers too and answers
        # a violation by closing the connection: send these on a throwaway one.
        assert bus.nc.connected_url is not None
        nc = await nats.connect(bus.nc.connected_url.geturl(), allow_reconnect=False)
        try:
            return await publish_on(nc.jetstream(), bus.stream_name, sent, hdrs, wait_s=2)
        except (nats.errors.Error, TimeoutError, OSError):
            sent.edge = "edge:max_payload"
        finally:
            await nc.close()
        return None
    return await publish_on(bus.js, bus.stream_name, sent, hdrs, wait_s=10)


async def publish_on(js: JetStreamContext, stream: str, sent: Sent, hdrs: dict[str, str],
                     *, wait_s: float) -> None:
    try:
        ack = await js.publish(sent.item.subject, sent.item.body, headers=hdrs or None,
                               timeout=wait_s)
    except nats.errors.BadSubjectError:
        sent.edge = "edge:bad_subject"
    except nats.js.errors.NoStreamResponseError:
        sent.edge = "edge:no_stream"
    except nats.errors.MaxPayloadError:
        sent.edge = "edge:max_payload"
    except nats.js.errors.APIError:  # wrong expected stream/sequence, size, rollup
        sent.edge = "edge:refused"
    else:
        assert not ack.duplicate, sent.item.kind
        sent.seq = ack.seq
        sent.msg_id = hdrs.get(headers.MSG_ID) or f"{stream}-{ack.seq}"


async def settle(bus: Bus, durables: list[str], *, quiet_s: float = 1.0) -> None:
    """Until no consumer has pending or unacknowledged messages for ``quiet_s``."""
    quiet_since: float | None = None
    while True:
        busy = 0
        for durable in durables:
            info = await bus.js.consumer_info(bus.stream_name, durable)
            busy += info.num_pending + info.num_ack_pending
        now = time.monotonic()
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return
        await anyio.sleep(0.2)


@dataclass(slots=True)
class Stored:
    subject: str
    headers: dict[str, str]
    data: bytes


async def read_stream(bus: Bus) -> dict[int, Stored]:
    """Every message of the namespace's stream, by sequence.

    Through raw pull requests, not nats-py's ``fetch``: a stored message with a
    ``Status`` header and no body (one of the inputs) looks like a server status to it.
    In batches of at most ``_READ_BATCH`` messages and 8 MB, each read before the next
    is asked for: one request for the whole stream (tens of MB, some messages near the
    payload limit) had the server cut a busy reader off as a slow consumer.
    """
    last = (await bus.js.stream_info(bus.stream_name)).state.last_seq
    info = await bus.js.add_consumer(bus.stream_name, api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL,
        inactive_threshold=30, max_waiting=1))
    out: dict[int, Stored] = {}
    ended = [anyio.Event()]  # the current request's end (a status from the server)

    async def on_msg(m: Msg) -> None:
        if (m.reply or "").startswith("$JS.ACK."):
            out[Delivery.of(m).stream_seq] = Stored(
                m.subject, {str(k): str(v) for k, v in (m.headers or {}).items()}, m.data)
        elif (m.headers or {}).get("Status") != "100":  # not a heartbeat: request over
            ended[0].set()

    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=-1)
    try:
        with anyio.fail_after(120):
            while len(out) < last:
                ended[0] = anyio.Event()
                want = min(_READ_BATCH, last - len(out))
                target = len(out) + want
                await bus.nc.publish(
                    f"$JS.API.CONSUMER.MSG.NEXT.{bus.stream_name}.{info.name}",
                    json.dumps({"batch": want, "max_bytes": 8 * MAX_PAYLOAD,
                                "expires": int(30e9)}).encode(), reply=inbox)
                while len(out) < target and not ended[0].is_set():
                    await anyio.sleep(0.005)
    finally:
        await sub.unsubscribe()
        await bus.js.delete_consumer(bus.stream_name, info.name)
    return out


_READ_BATCH = 256


async def test_hostile_barrage_is_accounted_for_and_the_swarm_goes_on(
    nats_url: str, namespace: str
) -> None:
    started = time.monotonic()
    inputs = await anyio.to_thread.run_sync(generate, namespace)
    generated_s = time.monotonic() - started
    assert len(inputs) >= 10_000

    roles = {r: {"concurrency": 32, "max_deliver": 2} for r in ROLES}
    agents = build_agents(load_config(None, environ={}, offline=True, namespace=namespace,
                                      roles=roles))
    for agent in agents:  # a smaller body limit than the default keeps oversize inputs cheap
        agent.consumer = agent.consumer.model_copy(update={"max_body_bytes": MAX_BODY})
    notifier = Notifier()
    agents += [Auditor(), notifier]
    sent = [Sent(item) for item in inputs]
    async with (
        Swarm(agents, nats=nats_url, namespace=namespace, grace_s=5) as swarm,
        await Bus.connect(nats_url, namespace=namespace) as attacker,
    ):
        client = await SwarmClient.connect(nats_url, namespace=namespace)
        flags = await cancel_flags(attacker)  # set before any message of theirs exists
        for wf in CANCELLED:
            await flags.put(wf, b"1")
        todo = iter(enumerate(sent))

        async def publisher() -> None:  # a pool, not a task per input (cheaper, bounded)
            for i, s in todo:
                await publish(attacker, s, i)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for _ in range(64):
                    tg.start_soon(publisher)
            published_s = time.monotonic() - started
            await settle(attacker, [a.durable for a in agents])
        settled_s = time.monotonic() - started

        # The swarm is still up: every agent consumes and announces itself, and a valid
        # task submitted now goes the whole way.
        async with client:
            wf = await client.submit("Write greet(name) returning a greeting", workflow_id="after")
            final = await client.result(wf, timeout_s=60)
        assert final.status == "approved", final.reason
        ann = await attacker.key_value("agents")
        announced = {k.split(".")[0] for k in await ann.keys()}
        assert announced >= {a.name for a in agents}
        stats = {name: cs[0] for name, cs in swarm.stats().items()}
        stream = await read_stream(attacker)
    total_s = time.monotonic() - started

    # -- accounting ----------------------------------------------------------------------
    letters: dict[int, list[DeadLetter]] = defaultdict(list)
    outputs: dict[str, list[int]] = defaultdict(list)
    input_seqs = {s.seq for s in sent if s.seq}
    undecodable_outputs = []
    for seq, m in stream.items():
        if seq in input_seqs:
            continue
        t = registry.get(m.headers.get(headers.TYPE, ""))
        try:
            assert t is not None
            msg = t.model_validate_json(m.data)
        except (AssertionError, ValidationError) as e:
            undecodable_outputs.append((seq, m.subject, repr(e)[:300]))
            continue
        if isinstance(msg, DeadLetter):
            assert msg.stream_seq is not None
            letters[msg.stream_seq].append(msg)
        cause = m.headers.get(headers.CAUSATION_ID)
        if cause:
            outputs[cause].append(seq)
    assert not undecodable_outputs, undecodable_outputs[:5]

    # A workflow with a message on its result subject has ended, whoever put it there (a
    # hostile `result` input too: the server then refuses any other result for it).
    ended = {workflow_of(m.subject) for m in stream.values() if m.subject.endswith(".result")}
    work_subjects = {s.item.subject for s in sent if s.seq and _topic(s.item.subject) in (
        "task", "step.design", "step.implement", "step.review")}
    outcomes: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    wrong = []
    for s in sent:
        if s.edge:
            got = s.edge
        elif s.seq in letters:
            reasons = {dl.reason for dl in letters[s.seq]}
            assert len(reasons) == 1, (s.item.kind, reasons)
            got = "dl:" + reasons.pop()
        elif s.msg_id in notifier.seen or any(
                stream[o].subject.split(".", 3)[-1] != "deadletter" for o in outputs[s.msg_id]
        ) or (s.item.subject in work_subjects and workflow_of(s.item.subject) in ended):
            # handled: its output is in the stream, or its workflow had ended already (one
            # result per workflow: work for an ended one is dropped)
            got = "processed"
        elif s.seq in stream and stream[s.seq].subject == s.item.subject:
            got = "inert"
        else:
            got = "unaccounted"
        outcomes[got] += 1
        by_kind[s.item.kind.split("/")[0] + "/" + s.item.kind.split("/")[2]] += 1
        if got not in s.item.expect:
            wrong.append((got, sorted(s.item.expect), s.item.kind, s.item.subject[:80],
                          s.item.headers, s.item.body[:200]))
    print(f"\nhostile inputs: {len(sent)}; generated in {generated_s:.1f} s, published by "
          f"{published_s:.1f} s, settled by {settled_s:.1f} s, total {total_s:.1f} s")
    print("outcomes:", dict(sorted(outcomes.items())))
    print("agent stats:", stats)
    summary = Counter((w[0], tuple(w[1]), w[2]) for w in wrong)
    assert not wrong, f"{len(wrong)} inputs did not get what they should: {summary} {wrong[:5]}"
    assert outcomes["unaccounted"] == 0
    assert sum(outcomes.values()) == len(sent) >= 10_000
    # Every family of input really ran, and each outcome class was reached.
    for outcome in ("edge:bad_subject", "edge:no_stream", "edge:max_payload", "edge:refused",
                    "dl:undecodable", "dl:invalid", "dl:unknown_type", "dl:oversize",
                    "processed", "inert"):
        assert outcomes[outcome] >= 5, (outcome, outcomes)
    # No input went the retry path: nothing crashed a handler, nothing hit max deliveries.
    for name, st_ in stats.items():
        assert st_.retried == 0 and st_.redelivered == 0, (name, st_)
    dead_lettered = sum(st_.dead_lettered for st_ in stats.values())
    assert dead_lettered == sum(len(v) for v in letters.values())
    assert sum(n for o, n in outcomes.items() if o.startswith("dl:")) == len(letters)
