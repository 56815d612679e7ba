"""One swarm on a 3-node NATS cluster (JetStream R3): losing a node loses no work.

Three nats-server processes from the wheel on loopback, routed to each other; the
namespace's stream, its consumers and its key-value buckets at 3 replicas. The swarm
(scripted models with latency, real sandbox) and the client know every node. In the
middle of a run the node leading the stream is killed with SIGKILL: every workflow
still ends with exactly one result.

Also: a client that does not set ``stream.replicas`` (``swarmbus submit`` without
swarm.yaml) creates a new namespace at 1 replica, which a swarm configured with 3 scales
up (stream, consumers, buckets), and it never scales an existing R3 stream down.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import nats.errors
import nats.js.errors
import pytest
from _cluster import Cluster
from _team_helpers import GOAL, Script, team
from nats.js import api

from swarmbus.agents import Swarm
from swarmbus.bus import Bus, NatsSettings, StreamSettings, SwarmClient
from swarmbus.protocols import TaskRequest, TaskResult, namespace_filter

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKFLOWS = 30
NS = "cluster"
NO_MESSAGE = 10037  # JetStream: no message found


async def replicas_of(bus: Bus) -> dict[str, tuple[int, int]]:
    """Configured replicas and live peers (leader + replicas) of every stream and durable
    consumer the namespace uses (ephemeral ones, such as the ordered consumer a process
    follows results with, live in memory on one node and are re-made after a loss)."""
    out: dict[str, tuple[int, int]] = {}
    for info in await bus.js.streams_info():
        name = info.config.name or ""
        if NS not in name.lower():
            continue
        cl = info.cluster
        peers = (1 if cl and cl.leader else 0) + len(cl.replicas or []) if cl else 0
        out[name] = (info.config.num_replicas or 0, peers)
        if name in (bus.stream_name, bus.advisory_stream):
            for c in await bus.js.consumers_info(name):
                if not c.config.durable_name:
                    continue
                ccl = c.cluster
                cpeers = (1 if ccl and ccl.leader else 0) + len(ccl.replicas or []) if ccl else 0
                out[f"{name}/{c.name}"] = (c.config.num_replicas or 0, cpeers)
    return out


async def test_swarm_survives_losing_a_node(tmp_path: Path) -> None:
    # Distinct goals: no answer comes from the response cache, every workflow makes three
    # model calls and one sandbox run on the cluster.
    models = Script(latency_s=0.25, prefix="cl").models()
    r3 = StreamSettings(replicas=3)
    killed = ""
    with anyio.fail_after(90):
        async with Cluster(tmp_path) as cluster:
            urls = NatsSettings(servers=cluster.urls, reconnect_wait_s=0.2)
            ids = [f"wf{i:02d}" for i in range(WORKFLOWS)]
            # A client that does not say how many replicas (`swarmbus submit --nats ...`
            # without swarm.yaml) comes first: it creates the namespace at 1 replica...
            async with await SwarmClient.connect(cluster.urls[0], namespace=NS) as plain:
                await plain.submit(TaskRequest(goal=f"{GOAL} #0"), workflow_id=ids[0])
            # ...which the swarm, configured with stream.replicas: 3, scales up.
            async with (
                Swarm(team(models), nats=urls, namespace=NS, stream=r3, grace_s=5) as swarm,
                await SwarmClient.connect(urls, namespace=NS, stream=r3) as client,
            ):
                # Another plain client must not scale it down again.
                async with await SwarmClient.connect(",".join(cluster.urls),
                                                     namespace=NS) as plain:
                    assert plain.bus.stream.replicas == 3
                    await plain.submit(TaskRequest(goal=f"{GOAL} #1"), workflow_id=ids[1])
                for i, wf in enumerate(ids[2:], start=2):
                    await client.submit(TaskRequest(goal=f"{GOAL} #{i}"), workflow_id=wf)
                # Stream, advisory stream, role consumers and key-value buckets: all R3,
                # each with a leader and two replicas.
                got = await replicas_of(client.bus)
                while f"KV_swarm_{NS}_agents" not in got:  # the first announcement makes it
                    await anyio.sleep(0.05)
                    got = await replicas_of(client.bus)
                st, adv = client.bus.stream_name, client.bus.advisory_stream
                assert sorted(got) == sorted([
                    st, f"{st}/architect@code-review", f"{st}/coder@code-review",
                    f"{st}/reviewer@code-review", f"{st}/supervisor", adv,
                    f"{adv}/swarmbus_deadletter", f"SWARMTIMER_{NS.upper()}",
                    *(f"KV_swarm_{NS}_{b}" for b in (
                        "agents", "cancel", "carry", "responses", "workflows")),
                    f"OBJ_swarm_{NS}_artifacts",
                ]), got
                assert all(r == (3, 3) for r in got.values()), got

                results: dict[str, TaskResult] = {}

                async def await_result(wf: str) -> None:
                    results[wf] = await client.result(wf)

                async with anyio.create_task_group() as tg:
                    for wf in ids:
                        tg.start_soon(await_result, wf)
                    # Mid-run: kill -9 the node that leads the stream.
                    while len(results) < WORKFLOWS // 4:
                        await anyio.sleep(0.05)
                    info = await client.bus.js.stream_info(client.bus.stream_name)
                    assert info.cluster is not None and info.cluster.leader
                    killed = info.cluster.leader
                    victim = cluster.node(killed)
                    done_before = len(results)
                    await victim.stop(kill=True)
                retried = sum(c.retried for cs in swarm.stats().values() for c in cs)

            # Read the trail back from a surviving node: one result per workflow, all approved.
            survivors = NatsSettings(servers=[n.url for n in cluster.nodes if n.running])
            async with await Bus.connect(survivors, namespace=NS, setup=False) as bus:
                info = await leader_elected(bus)
                per_wf = Counter[str]()
                topics = Counter[str]()
                seq = 0
                while True:
                    stored = await _next(bus, seq)
                    if stored is None:
                        break
                    seq, subj = stored
                    _, _, wf, topic = subj.split(".", 3)
                    topics[topic] += 1
                    if topic == "result":
                        per_wf[wf] += 1

    assert done_before < WORKFLOWS, "the node must die while work is in flight"
    assert killed and info.cluster is not None and info.cluster.leader != killed
    assert sorted(results) == ids
    assert {wf: r.status for wf, r in results.items()} == dict.fromkeys(ids, "approved")
    assert per_wf == Counter(dict.fromkeys(ids, 1)), per_wf
    assert topics == Counter({"task": WORKFLOWS, "step.implement": WORKFLOWS,
                              "step.review": WORKFLOWS, "result": WORKFLOWS}), topics
    print(f"killed {killed} after {done_before}/{WORKFLOWS} results; {retried} retries")


async def leader_elected(bus: Bus) -> api.StreamInfo:
    """The stream's info once the survivors answer it with a leader: right after a node
    loss the API may time out (or not know the stream yet) while leaders move."""
    while True:
        try:
            info = await bus.js.stream_info(bus.stream_name)
        except (nats.errors.TimeoutError, nats.js.errors.NotFoundError):
            info = None
        if info is not None and info.cluster is not None and info.cluster.leader:
            return info
        await anyio.sleep(0.2)


async def _next(bus: Bus, after: int) -> tuple[int, str] | None:
    try:
        raw = await bus.js.get_msg(bus.stream_name, seq=after + 1,
                                   subject=namespace_filter(NS), next=True)
    except nats.js.errors.NotFoundError as e:
        if e.err_code != NO_MESSAGE:
            raise  # "stream not found" is not the end of the stream
        return None
    assert raw.seq is not None
    return raw.seq, str(raw.subject)
