"""The foundation's promises, against a real nats-server: replicas share work, nothing is
lost when processes die or the server restarts, outputs are published once, bad input is
dead-lettered and never kills an agent. Plus the wire contract at unit level."""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
import time
from collections import Counter
from functools import partial
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from agent_proc import (
    Done,
    Job,
    Worker,
    done_by,
    numbers,
    outputs,
    settled,
    spawn,
    until,
    until_true,
    wait_announced,
    wait_done,
)

from swarmbus.agents import Agent, Context, Swarm, handles
from swarmbus.bus import (
    Bus,
    BusUnavailableError,
    ConsumerSettings,
    DecodeError,
    EmbeddedServer,
    NatsSettings,
    PayloadTooLargeError,
    Reject,
    Retry,
    StreamSettings,
    WatchedKeys,
    decode,
    encode,
    free_port,
    output_msg_id,
)
from swarmbus.protocols import (
    DeadLetter,
    Message,
    Meta,
    Subject,
    SubjectError,
    TaskRequest,
    TypeRegistry,
    UnknownTypeError,
    headers,
    message_type,
    registry,
    subject,
    topic_filter,
    workflow_filter,
)

pytestmark = pytest.mark.anyio

FAST = ConsumerSettings(ack_wait_s=2, max_deliver=3, retry_delay_s=0.05, concurrency=4)


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    await until_true(lambda: proc.poll() is not None)
    return proc.returncode


async def publish_jobs(bus: Bus, wf: str, jobs: list[Job]) -> None:
    for job in jobs:
        await bus.publish(wf, "job", job, Meta(f"{wf}-job-{job.n}"))


# -- replicas, crashes, restarts -------------------------------------------------------------


@pytest.mark.slow
async def test_replicas_share_work_and_other_type_gets_everything(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    n = 24
    ev = [tmp_path / "r1.jsonl", tmp_path / "r2.jsonl"]
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        auditor = Worker(name="auditor", replica="a", consumer=FAST)
        async with Swarm([auditor], bus=bus):
            for i, path in enumerate(ev):
                procs.append(spawn(nats_url, namespace, replica=f"r{i + 1}", events=path,
                                   concurrency=2))
            with anyio.fail_after(30):
                await wait_announced(bus, "worker", [p.pid for p in procs])
                await publish_jobs(bus, "w", [Job(n=i, sleep_s=0.05) for i in range(n)])
                done = await wait_done(bus, "w", n)
                audited = await wait_done(bus, "w", n, agent="auditor")
                info = await settled(bus)
    assert info.num_redelivered == 0, "every job acked on its first delivery"
    handled = Counter(numbers(ev[0], "done") + numbers(ev[1], "done"))
    assert handled == Counter(range(n)), "each job handled exactly once between the replicas"
    assert numbers(ev[0], "done") and numbers(ev[1], "done"), "both replicas got work"
    assert sorted(d.n for d in done) == list(range(n))
    assert sorted(d.n for d in audited) == list(range(n))
    assert sorted(auditor.handled) == list(range(n))


@pytest.mark.slow
async def test_kill_9_mid_handler_is_redelivered_to_other_replica(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    ev = {r: tmp_path / f"{r}.jsonl" for r in ("r1", "r2")}
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        for r, path in ev.items():
            procs.append(spawn(nats_url, namespace, replica=r, events=path, ack_wait_s=1,
                               concurrency=1))
        with anyio.fail_after(30):
            await wait_announced(bus, "worker", [p.pid for p in procs])
            jobs = [Job(n=0, sleep_s=1.0)] + [Job(n=i, sleep_s=0.05) for i in range(1, 6)]
            await publish_jobs(bus, "w", jobs)
            await until_true(lambda: any(0 in numbers(p, "start") for p in ev.values()))
            (vr,) = [r for r, p in ev.items() if 0 in numbers(p, "start")]
            proc = procs[list(ev).index(vr)]
            proc.send_signal(signal.SIGKILL)
            assert await wait_exit(proc) == -signal.SIGKILL
            assert 0 not in numbers(ev[vr], "done"), "killed while job 0 was in flight"
            done = await wait_done(bus, "w", len(jobs))
            await settled(bus)
    assert sorted(d.n for d in done) == list(range(len(jobs))), "nothing lost"
    (zero,) = [d for d in done if d.n == 0]
    assert zero.replica != vr, "job 0 was completed by the surviving replica"


async def test_handler_that_runs_twice_publishes_once(nats_url: str, namespace: str) -> None:
    attempts: list[int] = []

    class Flaky(Agent):
        name = "flaky"

        @handles("job")
        async def on_job(self, msg: Job, ctx: Context[Job]) -> None:
            attempts.append(msg.n)
            await ctx.publish(Done(n=msg.n, agent=self.name, replica="x"))
            await ctx.publish(Done(n=msg.n + 100, agent=self.name, replica="x"))
            if len(attempts) == 1:
                raise RuntimeError("fails after publishing, the first time only")

    flaky = Flaky(consumer=FAST)
    async with Swarm([flaky], nats=nats_url, namespace=namespace) as swarm:
        await publish_jobs(swarm.bus, "w", [Job(n=1)])
        with anyio.fail_after(10):
            await until_true(lambda: swarm.stats()["flaky"][0].handled == 1)
        done = await done_by(swarm.bus, "w", agent="flaky")
    assert attempts == [1, 1]
    assert sorted(d.n for d in done) == [1, 101], "each output stored once"


async def test_bad_input_is_dead_lettered_and_agent_goes_on(
    nats_url: str, namespace: str
) -> None:
    job_type = {headers.TYPE: Job.swarm_type}
    cases: dict[str, tuple[bytes, dict[str, str], str]] = {
        "bytes": (b"\xff\xfe{not json", job_type, "undecodable"),
        "schema": (b'{"n": "not a number"}', job_type, "invalid"),
        "type": (b'{"n": 1}', {headers.TYPE: "tests.NoSuchType/1"}, "unknown_type"),
        "size": (json.dumps({"n": 1, "pad": "x" * 20_000}).encode(), job_type, "oversize"),
        "wrong": (TaskRequest(goal="g").model_dump_json().encode(),
                  {headers.TYPE: TaskRequest.swarm_type}, "invalid"),
    }
    worker = Worker(consumer=FAST.model_copy(update={"max_body_bytes": 2048}))
    async with Swarm([worker], nats=nats_url, namespace=namespace) as swarm:
        bus = swarm.bus
        for i, (wf, (body, hdrs, _)) in enumerate(cases.items()):
            await bus.publish_raw(subject(namespace, wf, "job"), body, hdrs)
            await publish_jobs(bus, wf, [Job(n=i)])  # a valid one right after
        with anyio.fail_after(10):
            for wf in cases:
                await until(partial(bus.last, wf, "deadletter"))
                await until(partial(bus.last, wf, "done"))
        for wf, (body, _, reason) in cases.items():
            stored = await bus.last(wf, "deadletter")
            assert stored is not None
            letter = stored.decode().message
            assert isinstance(letter, DeadLetter)
            assert letter.reason == reason, wf
            assert letter.subject == subject(namespace, wf, "job")
            assert letter.body_size == len(body)
            assert letter.body_truncated == (wf == "size")
            assert letter.agent == "worker" and letter.error
        (stats,) = swarm.stats()["worker"]
    assert sorted(worker.handled) == list(range(len(cases)))
    assert stats.dead_lettered == len(cases)


async def test_each_agent_type_that_gives_up_leaves_its_own_dead_letter(
    nats_url: str, namespace: str
) -> None:
    a, b = Worker(name="a", consumer=FAST), Worker(name="b", consumer=FAST)
    async with Swarm([a, b], nats=nats_url, namespace=namespace) as swarm:
        await swarm.bus.publish_raw(subject(namespace, "w", "job"), b"garbage")
        with anyio.fail_after(10):
            await until_true(lambda: sum(s.dead_lettered for (s,) in
                                         [swarm.stats()["a"], swarm.stats()["b"]]) == 2)
        letters = await outputs(swarm.bus, "w", "deadletter")
    assert sorted((d.agent, d.reason) for d in letters if isinstance(d, DeadLetter)) == [
        ("a", "undecodable"), ("b", "undecodable")]


@pytest.mark.slow
async def test_message_that_kills_its_process_ends_in_deadletter(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        deaths = 0
        letter = None
        with anyio.fail_after(60):  # three process starts; slow on a busy machine
            while letter is None:
                # A supervisor: (re)start the replica whenever it died.
                ev = tmp_path / f"run{len(procs)}.jsonl"
                proc = spawn(nats_url, namespace, replica=f"run{len(procs)}", events=ev,
                             ack_wait_s=1, max_deliver=3)
                procs.append(proc)
                await wait_announced(bus, "worker", [proc.pid])
                if not deaths:
                    await publish_jobs(bus, "w", [Job(n=7, die=True)])

                async def died_or_dead_lettered(p: subprocess.Popen[bytes] = proc) -> object:
                    return p.poll() is not None or await bus.last("w", "deadletter")

                await until(died_or_dead_lettered, every_s=0.05)
                if proc.poll() is not None:
                    assert proc.returncode == -signal.SIGKILL
                    deaths += 1
                elif stored := await bus.last("w", "deadletter"):
                    letter = stored.decode().message
            await publish_jobs(bus, "w", [Job(n=8)])
            (after,) = await wait_done(bus, "w", 1)
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "max_deliveries"
    assert letter.deliveries == 3 and deaths == 3
    assert json.loads(letter.body)["n"] == 7
    assert after.n == 8, "the replica goes on with the next message"


@pytest.mark.slow
async def test_sigterm_during_load_loses_nothing_in_flight(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    n = 16
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        procs.append(spawn(nats_url, namespace, replica="first", events=first, concurrency=4))
        with anyio.fail_after(30):
            await wait_announced(bus, "worker", [procs[0].pid])
            await publish_jobs(bus, "w", [Job(n=i, sleep_s=0.4) for i in range(n)])
            await until_true(lambda: len(numbers(first, "start")) >= 6)
            in_flight = set(numbers(first, "start")) - set(numbers(first, "done"))
            procs[0].send_signal(signal.SIGTERM)
            assert await wait_exit(procs[0]) == 0
            started, finished = set(numbers(first, "start")), set(numbers(first, "done"))
            assert in_flight and in_flight <= finished, "in-flight handlers finished"
            assert started == finished
            procs.append(spawn(nats_url, namespace, replica="second", events=second))
            done = await wait_done(bus, "w", n)
            await settled(bus)
    assert sorted(d.n for d in done) == list(range(n))
    assert {d.n for d in done if d.replica == "first"} == finished
    rest = Counter(numbers(second, "done"))
    assert rest == Counter(set(range(n)) - finished), "acked work is not handled again"


async def test_handler_that_always_fails_ends_in_deadletter(
    nats_url: str, namespace: str
) -> None:
    attempts: list[int] = []

    class Broken(Agent):
        @handles("job")
        async def on_job(self, msg: Job, ctx: Context[Job]) -> None:
            attempts.append(ctx.deliveries)
            raise RuntimeError("never works")

    async with Swarm([Broken(consumer=FAST)], nats=nats_url, namespace=namespace) as swarm:
        await publish_jobs(swarm.bus, "w", [Job(n=3)])
        with anyio.fail_after(10):
            stored = await until(partial(swarm.bus.last, "w", "deadletter"))
    letter = stored.decode().message
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.deliveries, letter.agent) == ("max_deliveries", 3, "broken")
    assert attempts == [1, 2, 3], "nak'ed with a delay, redelivered until max_deliver"


async def test_handler_decides_retry_or_reject(nats_url: str, namespace: str) -> None:
    seen: list[tuple[int, int]] = []

    class Picky(Agent):
        @handles("job")
        async def on_job(self, msg: Job, ctx: Context[Job]) -> None:
            seen.append((msg.n, ctx.deliveries))
            if msg.n == 1 and ctx.deliveries == 1:
                raise Retry("not yet", delay_s=0.05)
            if msg.n == 2:
                raise Reject("never: n == 2")
            await ctx.publish(Done(n=msg.n, agent="picky", replica="x"))

    # An ack wait far beyond the bound: the retry comes from the nak's delay.
    picky = Picky(consumer=FAST.model_copy(update={"ack_wait_s": 60}))
    async with Swarm([picky], nats=nats_url, namespace=namespace) as swarm:
        await publish_jobs(swarm.bus, "w", [Job(n=1), Job(n=2)])
        with anyio.fail_after(10):
            stored = await until(partial(swarm.bus.last, "w", "deadletter"))
            (done,) = await wait_done(swarm.bus, "w", 1, agent="picky")
    letter = stored.decode().message
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.error, letter.deliveries) == ("rejected", "never: n == 2", 1)
    assert done.n == 1
    assert sorted(seen) == [(1, 1), (1, 2), (2, 1)]


@pytest.mark.slow
async def test_sigterm_past_the_grace_period_naks_for_a_fresh_process(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        # An ack wait far beyond the bound below: only a nak explains a quick redelivery.
        procs.append(spawn(nats_url, namespace, replica="first", events=first, grace_s=0.3,
                           ack_wait_s=60))
        with anyio.fail_after(15):
            await wait_announced(bus, "worker", [procs[0].pid])
            await publish_jobs(bus, "w", [Job(n=0, sleep_s=1.5)])
            await until_true(lambda: numbers(first, "start") == [0])
            procs[0].send_signal(signal.SIGTERM)
            assert await wait_exit(procs[0]) == 0
            assert numbers(first, "done") == [], "cut off at the end of the grace period"
            procs.append(spawn(nats_url, namespace, replica="second", events=second,
                               ack_wait_s=60))
            (done,) = await wait_done(bus, "w", 1)
    assert done.replica == "second"


@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_server_restart_while_agents_run(tmp_path: Path, namespace: str, kill: bool) -> None:
    n = 20
    async with EmbeddedServer(data_dir=tmp_path / "nats") as server:
        nats = NatsSettings(servers=[server.url], reconnect_wait_s=0.2)
        worker = Worker(consumer=FAST)
        bus = await Bus.connect(nats, namespace=namespace)
        async with bus, Swarm([worker], nats=nats, namespace=namespace) as swarm:
            with anyio.fail_after(40):
                await publish_jobs(bus, "w", [Job(n=i, sleep_s=0.1) for i in range(n // 2)])
                await until_true(lambda: len(worker.handled) >= 2)
                await server.stop(kill=kill)
                await server.start()
                await until_true(lambda: bus.nc.is_connected)
                await publish_jobs(bus, "w", [Job(n=i, sleep_s=0.1) for i in range(n // 2, n)])
                done = await wait_done(bus, "w", n)
                await settled(bus)
            assert swarm.bus.reconnects >= 1 and bus.reconnects >= 1
            (stats,) = swarm.stats()["worker"]
            assert stats.resubscribed >= 2, "the pull loop subscribed again after the restart"
    assert sorted(d.n for d in done) == list(range(n))
    assert set(worker.handled) == set(range(n))


async def test_long_handler_is_kept_alive_with_in_progress_acks(
    nats_url: str, namespace: str
) -> None:
    worker = Worker(consumer=FAST.model_copy(update={"ack_wait_s": 0.6}))
    async with Swarm([worker], nats=nats_url, namespace=namespace) as swarm:
        with anyio.fail_after(10):
            await publish_jobs(swarm.bus, "w", [Job(n=1, sleep_s=2.0)])
            await wait_done(swarm.bus, "w", 1)
            info = await settled(swarm.bus)
    assert worker.handled == [1], "handled once: no redelivery during the long handler"
    assert info.num_redelivered == 0


async def test_concurrency_per_replica_is_bounded(nats_url: str, namespace: str) -> None:
    worker = Worker(consumer=FAST.model_copy(update={"concurrency": 3}))
    async with Swarm([worker], nats=nats_url, namespace=namespace) as swarm:
        with anyio.fail_after(10):
            await publish_jobs(swarm.bus, "w", [Job(n=i, sleep_s=0.1) for i in range(12)])
            await wait_done(swarm.bus, "w", 12)
    assert worker.max_in_flight == 3, "the replica used, and never exceeded, its 3 slots"


# -- the wire contract -----------------------------------------------------------------------


@message_type("tests.Note", topics=("note",))
class Note(Message):
    text: str
    tags: list[str] = []


def test_codec_round_trip() -> None:
    msg = TaskRequest(goal="write a parser", constraints=["stdlib only"])
    body, hdrs = encode(msg, Meta("m-1", causation_id="c-0", sender="tester", round=2,
                                  model="offline:echo"))
    assert hdrs == {
        "Swarm-Type": "swarmbus.TaskRequest/1", "Nats-Msg-Id": "m-1", "Swarm-Round": "2",
        "Swarm-Causation-Id": "c-0", "Swarm-Sender": "tester", "Swarm-Model": "offline:echo",
    }
    env = decode("swarm.ns.wf-1.task", body, hdrs)
    assert env.message == msg and isinstance(env.message, TaskRequest)
    assert (env.msg_id, env.causation_id, env.sender, env.round, env.model) == (
        "m-1", "c-0", "tester", 2, "offline:echo")
    assert (env.workflow_id, env.topic) == ("wf-1", "task")
    # Without headers the topic implies the type: the smallest kick-off from any language.
    bare = decode("swarm.ns.wf-1.task", b'{"goal": "g"}', None, fallback_id="seq-9")
    assert bare.message == TaskRequest(goal="g") and bare.msg_id == "seq-9"
    with pytest.raises(TypeError):
        encode(Message(), Meta("x"))


@pytest.mark.parametrize(
    ("subj", "body", "hdrs", "reason"),
    [
        ("swarm.ns.w.task", b"\x80\x81", None, "undecodable"),
        ("swarm.ns.w.task", b"[1, 2", None, "undecodable"),
        ("swarm.ns.w.task", b'{"goal": ""}', None, "invalid"),
        ("swarm.ns.w.task", b"{}", None, "invalid"),
        ("swarm.ns.w.nothing", b'{"goal": "g"}', None, "unknown_type"),
        ("swarm.ns.w.task", b'{"goal": "g"}', {"Swarm-Type": "x.Y/1"}, "unknown_type"),
        ("swarm.ns.w.task", b'{"goal": "' + b"g" * 100 + b'"}', None, "oversize"),
        ("elsewhere.ns.w.task", b'{"goal": "g"}', None, "invalid"),
    ],
)
def test_decode_errors_carry_the_reason(
    subj: str, body: bytes, hdrs: dict[str, str] | None, reason: str
) -> None:
    with pytest.raises(DecodeError) as info:
        decode(subj, body, hdrs, max_bytes=64)
    assert info.value.reason == reason


def test_output_ids_are_deterministic() -> None:
    a = output_msg_id("in-1", "coder", 0)
    assert a == output_msg_id("in-1", "coder", 0)
    others = {output_msg_id("in-2", "coder", 0), output_msg_id("in-1", "reviewer", 0),
              output_msg_id("in-1", "coder", 1)}
    assert a not in others and len(others) == 3


def test_subjects_build_parse_reject() -> None:
    s = subject("default", "wf_1-a", "revise.code")
    assert s == "swarm.default.wf_1-a.revise.code"
    assert Subject.parse(s) == Subject("default", "wf_1-a", "revise.code")
    assert str(Subject.parse(s)) == s
    assert topic_filter("default", "design") == "swarm.default.*.design"
    assert workflow_filter("default", "wf1") == "swarm.default.wf1.>"
    for bad in [("Upper", "w", "t"), ("a.b", "w", "t"), ("", "w", "t"), ("n" * 33, "w", "t"),
                ("ns", "w.1", "t"), ("ns", "*", "t"), ("ns", ">", "t"), ("ns", "", "t"),
                ("ns", "w", "a.*"), ("ns", "w", ">"), ("ns", "w", "a..b"), ("ns", "w", "")]:
        with pytest.raises(SubjectError):
            subject(*bad)
    for bad_subj in ["swarm.ns.w", "other.ns.w.t", "swarm.NS.w.t", "swarm.ns.w.t*"]:
        with pytest.raises(SubjectError):
            Subject.parse(bad_subj)
    assert issubclass(SubjectError, ValueError)


def test_registry_takes_user_types() -> None:
    reg = TypeRegistry()

    @message_type("acme.Ticket", version=2, topics=("ticket",), into=reg)
    class Ticket(Message):
        title: str

    assert Ticket.swarm_type == "acme.Ticket/2"
    assert reg.resolve("acme.Ticket/2", "anything") is Ticket
    assert reg.resolve(None, "ticket") is Ticket
    assert Ticket in reg and TaskRequest not in reg
    with pytest.raises(UnknownTypeError):
        reg.resolve("acme.Ticket/1", "ticket")
    with pytest.raises(UnknownTypeError):
        reg.resolve(None, "other")
    with pytest.raises(ValueError, match="already registered"):
        message_type("acme.Ticket", version=2, into=reg)(Note)
    for name, version in [("a/b", 1), ("", 1), ("ok", 0)]:
        with pytest.raises(ValueError):
            reg.register(Note, name, version)
    env = decode("swarm.ns.w.ticket", b'{"title": "t"}', None, types=reg)
    assert isinstance(env.message, Ticket)
    # The process-wide registry has the user type declared in this module too.
    assert registry.resolve(None, "note") is Note


def test_unknown_fields_are_kept_on_decode_and_encode() -> None:
    body = json.dumps({"goal": "g", "from_the_future": {"x": 1},
                       "limits": {"budget_usd": 2, "new_limit": 5}}).encode()
    env = decode("swarm.ns.w.task", body, None)
    msg = env.message
    assert isinstance(msg, TaskRequest)
    assert msg.model_extra == {"from_the_future": {"x": 1}}
    assert msg.limits.model_extra == {"new_limit": 5}
    again, _ = encode(msg, Meta("x"))
    out = json.loads(again)
    assert out["from_the_future"] == {"x": 1} and out["limits"]["new_limit"] == 5


async def test_unknown_fields_are_forwarded_by_an_agent(nats_url: str, namespace: str) -> None:
    class Forwarder(Agent):
        @handles("note")
        async def on_note(self, msg: Note, ctx: Context[Note]) -> None:
            await ctx.publish(msg, topic="note.seen")

    async with Swarm([Forwarder()], nats=nats_url, namespace=namespace) as swarm:
        body = json.dumps({"text": "hi", "priority": "high"}).encode()
        await swarm.bus.publish_raw(subject(namespace, "w", "note"), body)
        with anyio.fail_after(5):
            seen = await until(lambda: swarm.bus.last("w", "note.seen"))
    assert json.loads(seen.data) == {"text": "hi", "tags": [], "priority": "high"}
    assert seen.headers[headers.TYPE] == "tests.Note/1"
    assert seen.headers[headers.SENDER] == "forwarder"


def test_json_schema_export_has_every_type() -> None:
    schemas = registry.json_schemas()
    builtin = {"TaskRequest", "Work", "TaskResult", "DeadLetter", "AgentAnnouncement"}
    assert {f"swarmbus.{name}/1" for name in builtin} <= set(schemas)
    assert set(schemas) == {cls.swarm_type for cls in registry}
    assert "tests.Note/1" in schemas
    for wire, schema in schemas.items():
        assert schema["x-swarm-type"] == wire and schema["type"] == "object"
        json.dumps(schema)  # serialisable as is
    assert schemas["swarmbus.TaskRequest/1"]["required"] == ["goal"]
    assert schemas["swarmbus.TaskResult/1"]["x-swarm-default-topics"] == ["result"]


async def test_bus_unavailable_fails_fast() -> None:
    settings = NatsSettings(servers=[f"nats://127.0.0.1:{free_port()}"], connect_timeout_s=1)
    start = time.monotonic()
    with anyio.fail_after(settings.connect_timeout_s + 3), pytest.raises(BusUnavailableError):
        await Bus.connect(settings, namespace="nobody")
    assert time.monotonic() - start < settings.connect_timeout_s + 3
    with anyio.fail_after(settings.connect_timeout_s + 3), pytest.raises(BusUnavailableError):
        async with Swarm([Worker()], nats=settings, namespace="nobody"):
            pytest.fail("a swarm without NATS must not start")


async def test_embedded_server_start_stop() -> None:
    server = EmbeddedServer()
    assert not server.running
    async with server:
        assert server.running and server.pid
        async with await Bus.connect(server.url, namespace="embedded") as bus:
            assert (await bus.publish("w", "note", Note(text="x"), Meta("1"))).seq == 1
        data_dir = server.data_dir
        assert data_dir is not None and data_dir.is_dir()
    assert not server.running
    assert not data_dir.exists(), "a temporary data directory is removed"
    with pytest.raises(BusUnavailableError):
        await Bus.connect(NatsSettings(servers=[server.url], connect_timeout_s=1))


# -- the public surface ----------------------------------------------------------------------


@pytest.mark.parametrize("package", ["swarmbus.agents", "swarmbus.bus", "swarmbus.protocols"])
def test_all_attributes(package: str) -> None:
    mod = importlib.import_module(package)
    exported = mod.__all__
    assert isinstance(exported, tuple)
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(mod, name), f"{package}.__all__ names missing {name!r}"
    for name, value in vars(mod).items():
        if name.startswith("_"):
            continue
        if isinstance(value, ModuleType) and value.__name__ == f"{package}.{name}":
            continue  # a public submodule, imported as such
        assert name in exported, f"{package}.{name} is public but not in __all__"



async def test_oversize_publish_is_refused_before_it_reaches_the_server(
    nats_url: str, namespace: str
) -> None:
    """The server closes the connection of a client that exceeds max_payload: refuse first."""
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        big = TaskRequest(goal="x" * 20_000, constraints=["y" * 1_000] * 1_100)
        with pytest.raises(PayloadTooLargeError, match="exceeds the limit"):
            await bus.publish("wf", "task", big, Meta("big-1"))
        ok = await bus.publish("wf", "task", TaskRequest(goal="small"), Meta("small-1"))
        assert ok.seq > 0 and bus.nc.is_connected and bus.reconnects == 0


def test_a_topic_implies_one_type_only() -> None:
    reg = TypeRegistry()

    @message_type("t.First", topics=("only",), into=reg)
    class First(Message):
        a: int = 0

    with pytest.raises(ValueError, match=r"already implies t\.First/1"):

        @message_type("t.Second", topics=("only",), into=reg)
        class Second(Message):
            b: int = 0

    assert reg.resolve(None, "only") is First


async def test_watched_keys_mirror_puts_and_deletes(nats_url: str, namespace: str) -> None:
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        store = await bus.key_value("flags", ttl_s=60)
        await store.put("before", b"1")  # present before the mirror starts
        mirror = await WatchedKeys(bus, store).start()
        try:
            assert await mirror.contains("before")
            assert not await mirror.contains("later")
            async with await Bus.connect(nats_url, namespace=namespace) as other:
                other_store = await other.key_value("flags", ttl_s=60)
                await other_store.put("later", b"1")
                with anyio.fail_after(5):
                    while not await mirror.contains("later"):
                        await anyio.sleep(0.01)
                await other_store.delete("before")
                with anyio.fail_after(5):
                    while await mirror.contains("before"):
                        await anyio.sleep(0.01)
        finally:
            await mirror.aclose()


async def test_a_client_without_stream_settings_changes_nothing(
    nats_url: str, namespace: str
) -> None:
    """Only explicit settings change an existing stream; unset ones adopt what is there."""
    daemon = StreamSettings(max_age_s=3600, max_msg_bytes=256 * 1024, duplicate_window_s=60)
    async with await Bus.connect(nats_url, namespace=namespace, stream=daemon):
        pass
    async with await Bus.connect(nats_url, namespace=namespace) as client:
        cfg = (await client.js.stream_info(client.stream_name)).config
        assert client.stream.max_msg_bytes == 256 * 1024  # the limit publish_raw enforces
    assert cfg.max_age == 3600
    assert cfg.max_msg_size == 256 * 1024
    assert cfg.duplicate_window == 60
    async with await Bus.connect(
        nats_url, namespace=namespace, stream=StreamSettings(max_age_s=7200)
    ) as owner:
        cfg = (await owner.js.stream_info(owner.stream_name)).config
    assert cfg.max_age == 7200 and cfg.max_msg_size == 256 * 1024  # explicit wins, rest kept


async def test_deleted_consumer_is_recreated_and_work_goes_on(
    nats_url: str, namespace: str
) -> None:
    worker = Worker(consumer=FAST)
    async with Swarm([worker], nats=nats_url, namespace=namespace) as swarm:
        with anyio.fail_after(20):
            await publish_jobs(swarm.bus, "w", [Job(n=1)])
            await wait_done(swarm.bus, "w", 1)
            stats = swarm.stats()[worker.name][0]
            resubscribed = stats.resubscribed
            await swarm.bus.js.delete_consumer(swarm.bus.stream_name, worker.name)
            while stats.resubscribed == resubscribed:  # the pull loop notices and re-creates it
                await anyio.sleep(0.02)
            await swarm.bus.js.consumer_info(swarm.bus.stream_name, worker.name)
            await publish_jobs(swarm.bus, "w2", [Job(n=2)])
            await wait_done(swarm.bus, "w2", 1)
    assert sorted(worker.handled) == [1, 2]
