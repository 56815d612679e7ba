"""The delivery promises (README: Delivery guarantees) against what operators do by
accident: a server
whose store fills up, a durable consumer, stream or bucket deleted under a running
swarm, two daemons configured differently for one role, namespaces that differ in
``-`` and ``_``, Ctrl-C pressed twice.

Every test runs a real nats-server. What ran is counted above the response cache
(``Counted.perform``: one run per step per workflow is the promise), what survived is
read from the stream (messages per workflow and topic).
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.errors
import nats.js.errors
import pytest
from _fault_helpers import fake_tools, subject_counts
from _team_helpers import GOAL, Script, team
from agent_proc import Job, numbers, spawn, until_true, wait_announced
from pydantic import BaseModel

from swarmbus.agents import Agent, Swarm
from swarmbus.agents.workflow import StepAgent, StepCall
from swarmbus.bus import (
    Bus,
    ConsumerSettings,
    EmbeddedServer,
    StoreUnavailableError,
    StreamSettings,
    SwarmClient,
)
from swarmbus.protocols import Meta, TaskRequest, TaskResult, headers, stream_name

pytestmark = pytest.mark.anyio

ROLES = ("architect", "coder", "reviewer")
DURABLES = {role: f"{role}@code-review" for role in ROLES}


def counted(calls: Counter[tuple[str, str]]) -> dict[str, type[StepAgent]]:
    """Step agents that count each run of a step, per (workflow id, step), above the
    response cache: a redone step counts even when its answer came from the cache."""

    class Counted(StepAgent):
        async def perform(self, call: StepCall) -> BaseModel:
            calls[(call.ctx.workflow_id, call.step.id)] += 1
            return await super().perform(call)

    return dict.fromkeys(ROLES, Counted)


def make_team(calls: Counter[tuple[str, str]], *, latency_s: float = 0.0,
              consumer: ConsumerSettings | None = None, **kw: Any) -> list[Agent]:
    consumers = dict.fromkeys(ROLES, consumer) if consumer else None
    return team(Script(latency_s=latency_s).models(), classes=counted(calls),
                tools=fake_tools(), consumers=consumers, **kw)


async def submit(client: SwarmClient, wfs: list[str]) -> None:
    for wf in wfs:  # a goal each: no two workflows share a request
        await client.submit(TaskRequest(goal=f"{GOAL} ({wf})"), workflow_id=wf)


async def wait_results(bus: Bus, n: int) -> dict[str, int]:
    while len(counts := await subject_counts(bus, "result")) < n:
        await anyio.sleep(0.1)
    return counts


async def settled(bus: Bus, durables: tuple[str, ...] = tuple(DURABLES.values())) -> None:
    """Nothing pending, nothing unacknowledged: no late duplicate is on its way."""
    while True:
        infos = [await bus.js.consumer_info(bus.stream_name, d) for d in durables]
        if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
            return
        await anyio.sleep(0.1)


async def one_approved_result_each(bus: Bus, wfs: list[str]) -> None:
    counts = await subject_counts(bus, "result")
    assert {wf: counts.get(wf, 0) for wf in wfs} == dict.fromkeys(wfs, 1)
    assert await subject_counts(bus, "deadletter") == {}
    for wf in wfs:
        stored = await bus.last(wf, "result")
        assert stored is not None
        result = stored.decode().message
        assert isinstance(result, TaskResult) and result.status == "approved", (wf, result)


def once_per_step(calls: Mapping[tuple[str, str], int], wfs: list[str]) -> None:
    """Each of the three steps of each workflow ran exactly once."""
    want = {(wf, step): 1 for wf in wfs for step in ("design", "implement", "review")}
    assert {k: v for k, v in calls.items() if k[0] in wfs} == want


async def redelivered(bus: Bus) -> int:
    return sum([(await bus.js.consumer_info(bus.stream_name, d)).num_redelivered
                for d in DURABLES.values()])


def report(title: str, **figures: object) -> None:
    print(f"\n[{title}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# -- a full store ----------------------------------------------------------------------------


N_FULL = 20


@pytest.mark.timeout(90)
async def test_full_store_holds_paid_answers_and_every_workflow_ends_once_freed(
    tmp_path: Path, namespace: str
) -> None:
    conf = tmp_path / "js.conf"
    conf.write_text("jetstream { max_file_store: 8MB }\n")
    calls: Counter[tuple[str, str]] = Counter()
    wfs = [f"f{i:02d}" for i in range(N_FULL)]
    with anyio.fail_after(80):
        async with (
            EmbeddedServer(config_file=conf) as server,
            Swarm(make_team(calls, latency_s=0.3), nats=server.url, namespace=namespace,
                  grace_s=3) as swarm,
            await SwarmClient.connect(server.url, namespace=namespace) as client,
        ):
            js = client.bus.js
            await js.add_stream(name="FILLER", subjects=["filler.>"])
            await submit(client, wfs)
            # Another tenant fills the server's file store while the workflows run.
            filled = 0
            with pytest.raises(nats.js.errors.ServiceUnavailableError):
                while True:
                    await js.publish("filler.x", b"\0" * 256 * 1024)
                    filled += 1
            with pytest.raises(StoreUnavailableError, match=r"is full.*max_file_store") as e:
                await client.submit(TaskRequest(goal=f"{GOAL} (late)"), workflow_id="late")
            assert e.value.reason == "full"
            while swarm.bus.stalled is None:  # an agent tried to publish an answer
                await anyio.sleep(0.05)
            assert str(swarm.bus.stalled).startswith(f"stream {client.bus.stream_name} is full")
            # `status` says so (the agents announce it from a bucket in memory).
            waiting = [wf for wf in wfs if await client.bus.last(wf, "result") is None]
            assert waiting, "every workflow ended before the store filled: nothing tested"
            while (await client.status(waiting[0])).working != "stalled: storage full":
                await anyio.sleep(0.1)
            ran_while_full = sum(calls.values())
            await anyio.sleep(2)  # held: no new step starts, nothing is redelivered
            assert sum(calls.values()) == ran_while_full
            results_while_full = len(await subject_counts(client.bus, "result"))
            # Space returns: the held answers go out, the rest runs, the refused id is free.
            await js.delete_stream("FILLER")
            await client.submit(TaskRequest(goal=f"{GOAL} (late)"), workflow_id="late")
            everything = [*wfs, "late"]
            await wait_results(client.bus, len(everything))
            await settled(client.bus)
            await one_approved_result_each(client.bus, everything)
            once_per_step(calls, everything)
            assert await redelivered(client.bus) == 0, "no delivery was counted for the stall"
            assert swarm.bus.stalled is None
            assert (await client.status(waiting[0])).working == "done"
    report("full store", accepted=len(everything), results=len(everything),
           waiting_when_full=len(waiting), results_while_full=results_while_full,
           model_calls=sum(calls.values()), steps=3 * len(everything), filler_msgs=filled)


@pytest.mark.timeout(30)
async def test_a_stream_at_its_max_bytes_refuses_new_work_and_keeps_the_queued(
    nats_url: str, namespace: str
) -> None:
    """The stream's own cap (``stream.max_bytes``) never drops queued work to make room:
    it refuses, naming the limit to raise, and ``status`` says the workflow is stalled."""
    capped = StreamSettings(max_bytes=64 * 1024, max_msg_bytes=16 * 1024)
    with anyio.fail_after(20):
        async with await SwarmClient.connect(nats_url, namespace=namespace,
                                             stream=capped) as client:
            accepted: list[str] = []
            with pytest.raises(StoreUnavailableError) as e:
                for i in range(100):
                    await client.submit(TaskRequest(goal=f"{GOAL} {'x' * 4000} {i}"),
                                        workflow_id=f"m{i}")
                    accepted.append(f"m{i}")
            assert str(e.value) == (f"stream {client.bus.stream_name} is full: "
                                    "0.1 MB of 0.1 MB; free space or raise max_bytes "
                                    "(stream.max_bytes)")
            assert accepted and all([await client.bus.first(wf, "task") for wf in accepted])
            assert (await client.status(accepted[0])).working == "stalled: storage full"


# -- a deleted durable consumer --------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_consumer_deleted_with_work_queued_resumes_at_the_waiting_work(
    nats_url: str, namespace: str
) -> None:
    calls: Counter[tuple[str, str]] = Counter()
    done, queued = [f"d{i}" for i in range(3)], [f"q{i:02d}" for i in range(10)]
    with anyio.fail_after(50):
        async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
            async with Swarm(make_team(calls), nats=nats_url, namespace=namespace, grace_s=3):
                await submit(client, done)
                await wait_results(client.bus, len(done))
            # The daemon is down; work waits; a cleanup script deletes the entry role's
            # consumer (and the coder's).
            await submit(client, queued)
            for role in ("architect", "coder"):
                await client.bus.js.delete_consumer(client.bus.stream_name, DURABLES[role])
            async with Swarm(make_team(calls), nats=nats_url, namespace=namespace,
                             grace_s=3) as swarm:
                await wait_results(client.bus, len(done) + len(queued))
                await settled(client.bus)
                info = await client.bus.js.consumer_info(client.bus.stream_name,
                                                         DURABLES["architect"])
                first_queued = await client.bus.first(queued[0], "task")
                stats = {name: cs[0] for name, cs in swarm.stats().items()}
            await one_approved_result_each(client.bus, done + queued)
    once_per_step(calls, done + queued)  # the done ones were not redone
    assert first_queued is not None
    assert info.config.opt_start_seq == first_queued.seq, "started at the oldest waiting task"
    report("consumer deleted, work queued", queued=len(queued),
           architect_start_seq=info.config.opt_start_seq, skipped=stats["architect"].skipped)


@pytest.mark.timeout(60)
async def test_consumer_deleted_with_work_in_flight_loses_and_redoes_nothing(
    nats_url: str, namespace: str
) -> None:
    calls: Counter[tuple[str, str]] = Counter()
    wfs = [f"i{i:02d}" for i in range(24)]
    with anyio.fail_after(50):
        async with (
            Swarm(make_team(calls, latency_s=0.4), nats=nats_url, namespace=namespace,
                  grace_s=3) as swarm,
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            await submit(client, wfs)
            (coder,) = swarm.stats()["coder"]
            while coder.in_flight < 4:
                await anyio.sleep(0.01)
            in_flight = coder.in_flight
            await client.bus.js.delete_consumer(client.bus.stream_name, DURABLES["coder"])
            await wait_results(client.bus, len(wfs))
            await settled(client.bus)
            await one_approved_result_each(client.bus, wfs)
    once_per_step(calls, wfs)
    assert coder.recreated == 1
    report("consumer deleted, work in flight", in_flight=in_flight, skipped=coder.skipped,
           recreated=coder.recreated)


# -- two daemons, different settings ---------------------------------------------------------


@pytest.mark.timeout(90)
async def test_two_daemons_with_different_ack_waits_share_one_consumer_and_one_result(
    nats_url: str, namespace: str
) -> None:
    """Daemon B is configured with an ack wait shorter than a model call. Had it rewritten
    the consumer, A's deliveries would expire mid-call and run twice (two results):
    B adopts A's settings, warns, and announces what it uses. ``update_consumers`` is the
    explicit way to change them, and the running daemons follow."""
    calls: Counter[tuple[str, str]] = Counter()
    slow = 1.5  # seconds per model call
    wfs = [f"a{i}" for i in range(8)]
    with anyio.fail_after(80):
        a_agents = make_team(calls, latency_s=slow, consumer=ConsumerSettings(ack_wait_s=60))
        b_agents = make_team(calls, latency_s=slow, consumer=ConsumerSettings(ack_wait_s=1))
        async with (
            Swarm(a_agents, nats=nats_url, namespace=namespace, grace_s=3),
            Swarm(b_agents, nats=nats_url, namespace=namespace, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            bus = client.bus
            for role in ROLES:
                info = await bus.js.consumer_info(bus.stream_name, DURABLES[role])
                assert info.config.ack_wait == 60, role
            assert {a.consumer.ack_wait_s for a in b_agents if a.name in ROLES} == {60}
            await submit(client, wfs)
            await wait_results(bus, len(wfs))
            await settled(bus)
            await one_approved_result_each(bus, wfs)
            once_per_step(calls, wfs)
            assert await redelivered(bus) == 0
            anns = [a for a in await client.agents() if a.agent in ROLES]
            assert len(anns) == 6 and {a.settings["ack_wait_s"] for a in anns} == {60}

            # A stale copy of a step arriving after the result (a redelivery, a racing
            # replica) is dropped: no model call, still one result.
            review = await bus.last(wfs[0], "step.review")
            assert review is not None
            copy = {**review.headers, headers.MSG_ID: "stale-copy"}
            await bus.publish_raw(review.subject, review.data, copy)
            await settled(bus)
            assert (await subject_counts(bus, "result"))[wfs[0]] == 1
            once_per_step(calls, wfs)

            # The explicit way: a daemon started with update_consumers rewrites the ack
            # wait; the running daemons follow it (keep-alives included).
            c_agents = make_team(calls, consumer=ConsumerSettings(ack_wait_s=20),
                                 roles=["coder"], supervisor=False)
            async with Swarm(c_agents, nats=nats_url, namespace=namespace,
                             update_consumers=True, announce=False, dead_letters=False):
                info = await bus.js.consumer_info(bus.stream_name, DURABLES["coder"])
                assert info.config.ack_wait == 20
                while {a.settings["ack_wait_s"] for a in await client.agents()
                       if a.agent == "coder"} != {20}:
                    await anyio.sleep(0.2)


# -- deleted stream and buckets --------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_deleted_stream_is_recreated_while_a_raw_wire_publisher_submits(
    nats_url: str, namespace: str
) -> None:
    calls: Counter[tuple[str, str]] = Counter()
    with anyio.fail_after(50):
        async with (
            Swarm(make_team(calls), nats=nats_url, namespace=namespace, grace_s=3) as swarm,
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            await submit(client, ["before"])
            await wait_results(client.bus, 1)
            await client.bus.js.delete_stream(client.bus.stream_name)
            # A service in another language: one JSON message, no swarmbus code.
            raw = await nats.connect(nats_url)
            refused = 0
            try:
                js = raw.jetstream()
                while True:
                    try:
                        ack = await js.publish(f"swarm.{namespace}.raw.task",
                                               b'{"goal": "' + GOAL.encode() + b'"}')
                        break
                    except nats.js.errors.NoStreamResponseError:
                        refused += 1  # no stream yet: the daemon makes it again
                        await anyio.sleep(0.1)
            finally:
                await raw.close()
            assert ack.stream == stream_name(namespace)
            result = await client.result("raw")
            assert result.status == "approved"
            stats = {name: cs[0] for name, cs in swarm.stats().items()}
    assert calls[("raw", "design")] == 1
    assert stats["architect"].recreated >= 1
    report("stream deleted", publishes_refused=refused,
           consumers_recreated=sum(s.recreated for s in stats.values()))


@pytest.mark.timeout(60)
async def test_deleted_buckets_come_back_while_the_swarm_runs(
    nats_url: str, namespace: str
) -> None:
    calls: Counter[tuple[str, str]] = Counter()
    with anyio.fail_after(50):
        async with (
            Swarm(make_team(calls, latency_s=0.5), nats=nats_url, namespace=namespace,
                  grace_s=3),
            await SwarmClient.connect(nats_url, namespace=namespace) as client,
        ):
            js = client.bus.js
            buckets = {b: f"swarm_{namespace}_{b}" for b in ("agents", "responses", "cancel")}
            await submit(client, ["w1"])
            await client.result("w1")
            for bucket in buckets.values():
                await js.delete_key_value(bucket)

            async def exists(bucket: str) -> bool:
                try:
                    await js.stream_info(f"KV_{bucket}")
                except nats.js.errors.NotFoundError:
                    return False
                return True

            # Liveness: the next announcement makes the bucket again.
            while not await exists(buckets["agents"]):
                await anyio.sleep(0.1)
            # The response cache: the next model answer is stored in a new bucket.
            await submit(client, ["w2"])
            assert (await client.result("w2")).status == "approved"
            assert await exists(buckets["responses"])
            # Cancel flags: still honoured.
            await submit(client, ["w3"])
            await client.cancel("w3")
            assert (await client.result("w3")).status == "cancelled"
            assert {a.agent for a in await client.agents()} >= set(ROLES)


# -- namespaces ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_namespaces_that_differ_in_dash_and_underscore_share_nothing(
    nats_url: str, namespace: str
) -> None:
    dash, under = f"{namespace}-y", f"{namespace}_y"
    calls: Counter[tuple[str, str]] = Counter()
    with anyio.fail_after(50):
        async with (
            Swarm(make_team(calls, latency_s=0.5), nats=nats_url, namespace=dash, grace_s=3),
            await SwarmClient.connect(nats_url, namespace=dash) as in_dash,
            await SwarmClient.connect(nats_url, namespace=under) as in_under,
            # And the namespace whose stream would have taken the advisory stream's name.
            await SwarmClient.connect(nats_url, namespace=f"{dash}_advisories") as third,
        ):
            names = [
                {c.bus.stream_name, c.bus.advisory_stream,
                 *[(await c.bus.key_value(b)).bucket for b in ("cancel", "agents", "carry")]}
                for c in (in_dash, in_under, third)
            ]
            assert not (names[0] & names[1]) and not (names[0] & names[2]), names
            await in_dash.submit(TaskRequest(goal=GOAL), workflow_id="same")
            await in_under.submit(TaskRequest(goal=GOAL), workflow_id="same")
            await in_under.cancel("same")  # cancels the other namespace's "same" only
            assert (await in_dash.result("same")).status == "approved"
            assert {a.agent for a in await in_dash.agents()} >= set(ROLES)
            assert await in_under.agents() == []
            st = await in_under.status("same")
            assert st.result is None and st.known


# -- Ctrl-C twice ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_second_ctrl_c_forces_the_exit_and_naks_in_flight_work(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    events = tmp_path / "w.jsonl"
    proc = spawn(nats_url, namespace, replica="r", events=events, ack_wait_s=60, grace_s=30)
    procs.append(proc)
    with anyio.fail_after(45):  # two processes start: slow on a loaded machine
        async with await Bus.connect(nats_url, namespace=namespace) as bus:
            await wait_announced(bus, "worker", [proc.pid])
            await bus.publish("w", "job", Job(n=1, sleep_s=60), Meta("w-job-1"))
            await until_true(lambda: numbers(events, "start") == [1])
            proc.send_signal(signal.SIGINT)
            await anyio.sleep(1.0)
            assert proc.poll() is None, "the first Ctrl-C waits for in-flight work"
            proc.send_signal(signal.SIGINT)
            await until_true(lambda: proc.poll() is not None)
            assert proc.returncode == 0
            assert numbers(events, "done") == []
            # Nak'ed on the way out: the next replica gets it at once, not after the
            # 60 s ack wait.
            later = tmp_path / "later.jsonl"
            procs.append(spawn(nats_url, namespace, replica="later", events=later,
                               ack_wait_s=60))
            await wait_announced(bus, "worker", [procs[-1].pid])
            with anyio.fail_after(5):  # well before the 60 s ack wait
                await until_true(lambda: numbers(later, "start") == [1])
