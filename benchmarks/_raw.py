"""The raw nats-py baseline: one stage written directly against nats-py's JetStream API.

It does the same work as the framework paths, as a competent nats-py user would:

- a durable pull consumer (explicit ack, the same ack wait / max deliver / max
  ack pending as swarmbus's default ``ConsumerSettings``);
- ``PullSubscription.fetch(batch=min(100, free slots), timeout=5)`` in a loop;
  the messages of a batch are handled concurrently as tasks, and the loop
  fetches again as soon as a slot is free (it does not wait for the batch to
  finish), with at most ``concurrency`` handlers in flight;
- the handler decodes the JSON body, builds the output, publishes it through
  JetStream awaiting the stream's ack with a deterministic ``Nats-Msg-Id``
  (derived from the input's id), then ``msg.ack()`` (plain ack, not ack_sync).

Why ``fetch`` is not a strawman here: nats-py >= 2.10 sends its first pull
request with ``no_wait`` *and* ``expires``, which nats-server >= 2.9 answers
as "wait until at least one message is there, deliver what is available,
then end the request with a 404/408 status" -- so ``fetch(100, timeout=5)``
returns as soon as the first message arrives instead of holding the batch
open for the whole timeout (checked: one message published 200 ms after the
fetch returns after 203 ms, not 5 s). The timeout only bounds an idle poll;
it is 5 s so that idle polls cannot expire in the middle of a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import nats
import nats.errors
from nats.aio.msg import Msg
from nats.js import api

WORK_TYPE = "bench.Work/1"


async def run_raw_stage(
    url: str,
    namespace: str,
    name: str,
    in_topic: str,
    out_topic: str,
    *,
    concurrency: int = 100,
    batch: int = 100,
) -> None:
    nc = await nats.connect(url, name=f"raw-{name}")
    js = nc.jetstream(timeout=10.0)
    stream = "SWARM_" + namespace.upper()
    psub = await js.pull_subscribe(
        f"swarm.{namespace}.*.{in_topic}",
        durable=name,
        stream=stream,
        config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.NEW,
            ack_wait=30,
            max_deliver=5,
            max_ack_pending=1000,
        ),
    )

    async def handle(msg: Msg) -> None:
        work = json.loads(msg.data)
        work["hops"] += 1
        parts = msg.subject.split(".")
        in_id = (msg.headers or {}).get("Nats-Msg-Id", parts[2])
        await js.publish(
            f"swarm.{namespace}.{parts[2]}.{out_topic}",
            json.dumps(work).encode(),
            headers={"Nats-Msg-Id": f"{in_id}:{name}", "Swarm-Type": WORK_TYPE},
        )
        await msg.ack()

    in_flight: set[asyncio.Task[None]] = set()
    stopping = asyncio.Event()
    slot_free = asyncio.Event()

    def done(t: asyncio.Task[None]) -> None:
        in_flight.discard(t)
        slot_free.set()
        if not t.cancelled() and t.exception() is not None:
            print("handler failed:", repr(t.exception()), flush=True)

    async def pull_loop() -> None:
        while not stopping.is_set():
            free = concurrency - len(in_flight)
            if free <= 0:
                slot_free.clear()
                await slot_free.wait()
                continue
            try:
                msgs = await psub.fetch(min(batch, free), timeout=5.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for m in msgs:
                t = asyncio.create_task(handle(m))
                in_flight.add(t)
                t.add_done_callback(done)

    await _serve(pull_loop, stopping, in_flight)
    await nc.close()


async def run_rawpull_stage(
    url: str,
    namespace: str,
    name: str,
    in_topic: str,
    out_topic: str,
    *,
    concurrency: int = 100,
    batch: int = 100,
) -> None:
    """The same stage with hand-rolled standing pull requests instead of ``fetch``.

    This is the protocol swarmbus's ``PullConsumer`` speaks (pull requests
    published on an inbox subscription, credit kept at most equal to free
    handler slots, re-pull when half the slots are free), reduced to its core:
    no idle heartbeats, no reconnect handling, no nak/term/dead-letter paths,
    no in-progress acks. It is the strongest raw baseline, so swarmbus/raw-pull
    is the cost of the framework layers alone (typed decode, routing, Context,
    logging, bookkeeping), not of a different pull strategy.
    """
    nc = await nats.connect(url, name=f"rawpull-{name}")
    js = nc.jetstream(timeout=10.0)
    stream = "SWARM_" + namespace.upper()
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            durable_name=name,
            filter_subject=f"swarm.{namespace}.*.{in_topic}",
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.NEW,
            ack_wait=30,
            max_deliver=5,
            max_ack_pending=1000,
        ),
    )
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"

    async def handle(msg: Msg) -> None:
        work = json.loads(msg.data)
        work["hops"] += 1
        parts = msg.subject.split(".")
        in_id = (msg.headers or {}).get("Nats-Msg-Id", parts[2])
        await js.publish(
            f"swarm.{namespace}.{parts[2]}.{out_topic}",
            json.dumps(work).encode(),
            headers={"Nats-Msg-Id": f"{in_id}:{name}", "Swarm-Type": WORK_TYPE},
        )
        await msg.ack()

    in_flight: set[asyncio.Task[None]] = set()
    stopping = asyncio.Event()
    credit = 0
    want_pull = asyncio.Event()

    def done(t: asyncio.Task[None]) -> None:
        in_flight.discard(t)
        want_pull.set()
        if not t.cancelled() and t.exception() is not None:
            print("handler failed:", repr(t.exception()), flush=True)

    async def on_msg(msg: Msg) -> None:
        nonlocal credit
        hdrs = msg.headers
        if hdrs and "Status" in hdrs and not msg.data:  # 404/408/409: request over
            pending = hdrs.get("Nats-Pending-Messages")
            credit = max(0, credit - int(pending)) if pending is not None else 0
            want_pull.set()
            return
        credit -= 1
        t = asyncio.create_task(handle(msg))
        in_flight.add(t)
        t.add_done_callback(done)

    sub = await nc.subscribe(nc.new_inbox(), cb=on_msg, pending_msgs_limit=-1)
    threshold = max(1, min(batch, concurrency) // 2)

    async def pull_loop() -> None:
        nonlocal credit
        while not stopping.is_set():
            free = concurrency - len(in_flight) - credit
            if free >= threshold or (free > 0 and credit == 0):
                n = min(free, batch)
                credit += n
                await nc.publish(
                    next_subject,
                    json.dumps({"batch": n, "expires": 10_000_000_000}).encode(),
                    reply=sub.subject,
                )
                continue
            want_pull.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(want_pull.wait(), 1.0)

    await _serve(pull_loop, stopping, in_flight)
    await nc.close()


async def _serve(
    pull_loop: Callable[[], Coroutine[Any, Any, None]],
    stopping: asyncio.Event,
    in_flight: set[asyncio.Task[None]],
) -> None:
    """Run ``pull_loop`` until SIGTERM, then let in-flight handlers finish.

    The loop also checks ``stopping``: on Python 3.11 ``asyncio.wait_for`` can
    swallow a cancellation that races with its inner future completing.
    """
    puller = asyncio.create_task(pull_loop())

    def on_term() -> None:
        stopping.set()
        puller.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
    print("BENCH-READY", flush=True)
    await asyncio.wait({puller})
    if in_flight:
        await asyncio.wait(in_flight, timeout=10)
