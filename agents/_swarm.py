"""``Swarm``: several agents in one process, under one anyio task group."""

from __future__ import annotations

import functools
import gc
import os
import signal
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from swarmbus.bus import (
    AGENTS_BUCKET,
    AGENTS_STORAGE,
    Bus,
    ConsumerSettings,
    ConsumerStats,
    NatsSettings,
    PullConsumer,
    StreamSettings,
    dead_letter_worker,
)
from swarmbus.bus import AGENTS_TTL_S as _ANNOUNCE_TTL_S
from swarmbus.protocols import AgentAnnouncement, topics

from ._agent import Agent

__all__ = ["Swarm"]

log = structlog.get_logger("swarmbus.swarm")

GC_THRESHOLD = 10_000
"""Allocations between two young-generation collections in a tuned swarm process."""

_gc_tuned = False

_ANNOUNCES_PER_TTL = 4
"""An announcement is refreshed this many times per liveness TTL (a slow put or two
does not make a live agent look gone)."""
_END_TOPICS = (topics.RESULT,)
"""A workflow with a message here has ended (its only result)."""


class Swarm:
    """Runs ``agents`` against one namespace until stopped.

    ``async with Swarm([...], nats="nats://...") as swarm:`` starts every agent
    (consumers created, subscriptions live) before the body runs; leaving the
    block stops fetching, lets in-flight handlers finish within ``grace_s``,
    naks the rest and drains the connection. ``serve()`` does the same until
    SIGTERM or SIGINT. Pass ``bus=`` to share a connection you own.

    Consumers that exist already keep their server-side settings (ack wait, max
    deliveries; a warning names both values) unless ``update_consumers``, which
    rewrites them with the agents' (``swarmbus up --update-consumers``).

    Liveness: each agent announces itself in the namespace's ``agents`` bucket every
    ``liveness_ttl_s / 4`` seconds; an announcement not refreshed for
    ``liveness_ttl_s`` (default ``AGENTS_TTL_S``, 20 s) expires, so a process killed
    without a word counts as gone after at most that long (``swarmbus status``,
    ``swarmbus agents``). The swarm sets the bucket's TTL to its own when it differs
    (a bucket made without one would keep a dead agent for ever).

    ``tune_gc`` (default on): once started, the objects made at start-up are
    moved out of the garbage collector's view (``gc.freeze()``) and its first
    threshold is raised to ``GC_THRESHOLD`` allocations. A swarm keeps the state of
    every workflow in flight alive; with CPython's default (700) the collector
    rescans it so often that it took ~15% of the CPU of the benchmarks' team
    (``benchmarks/pipeline.py``). Pass False to leave the interpreter's settings alone.
    """

    def __init__(
        self,
        agents: Sequence[Agent],
        *,
        nats: NatsSettings | str | None = None,
        bus: Bus | None = None,
        namespace: str = "default",
        stream: StreamSettings | None = None,
        grace_s: float = 30.0,
        dead_letters: bool = True,
        announce: bool = True,
        update_consumers: bool = False,
        tune_gc: bool = True,
        liveness_ttl_s: float = _ANNOUNCE_TTL_S,
    ) -> None:
        names = [a.name for a in agents]
        if len(set(names)) != len(names):
            raise ValueError(f"agent names must be unique in one swarm: {names}")
        if not liveness_ttl_s >= 0.5:
            raise ValueError(f"liveness_ttl_s must be at least 0.5 seconds, got {liveness_ttl_s}")
        self.liveness_ttl_s = float(liveness_ttl_s)
        self.agents = list(agents)
        self.namespace = bus.namespace if bus else namespace
        self.grace_s = grace_s
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._nats = nats
        self._stream = stream
        self._bus = bus
        self._owns_bus = bus is None
        self._dead_letters = dead_letters
        self._announce = announce
        self._update_consumers = update_consumers
        self._tune_gc = tune_gc
        self._consumers: dict[str, list[PullConsumer]] = {}
        self._stop = anyio.Event()
        self._announce_now = anyio.Event()
        self._tg: TaskGroup | None = None
        self._started_at = datetime.now(UTC)

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("swarm not started")
        return self._bus

    def stats(self) -> dict[str, list[ConsumerStats]]:
        """Counts per agent, one entry per replica (pull loop)."""
        return {name: [c.stats for c in cs] for name, cs in self._consumers.items()}

    def stop(self) -> None:
        """Stop fetching; ``run`` returns once in-flight work is settled."""
        self._stop.set()
        self._announce_now.set()
        for cs in self._consumers.values():
            for c in cs:
                c.stop()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop()``. Signals readiness when every agent consumes."""
        if self._bus is None:
            self._bus = await Bus.connect(self._nats, namespace=self.namespace, stream=self._stream)
        bus = self._bus
        try:
            for agent in self.agents:
                await agent.setup(bus)
            async with anyio.create_task_group() as tg:
                if self._announce:  # announced before it takes any work
                    await tg.start(self._announce_loop)
                for agent in self.agents:
                    handler = functools.partial(agent.dispatch, bus)
                    for _ in range(agent.replicas):
                        consumer = PullConsumer(
                            bus, agent.durable, handler, topics=agent.topics,
                            settings=agent.consumer, sender=agent.name,
                            start=agent.start, update=self._update_consumers,
                            end_topics=_END_TOPICS if agent.start == "pending" else (),
                            # The settings in force (an existing consumer's win): the agent
                            # decides with them (e.g. on its last delivery).
                            on_settings=functools.partial(self._settings_in_force, agent),
                        )
                        self._consumers.setdefault(agent.name, []).append(consumer)
                        await tg.start(self._run_consumer, consumer)
                if self._dead_letters:
                    dlw = dead_letter_worker(bus)
                    self._consumers[dlw.durable] = [dlw]
                    await tg.start(self._run_consumer, dlw)
                if self._tune_gc:
                    tune_gc()
                log.info("swarm running", namespace=self.namespace, instance=self.instance,
                         agents=[a.name for a in self.agents])
                task_status.started()
                await self._stop.wait()
                self.stop()
        finally:
            with anyio.CancelScope(shield=True):
                for agent in self.agents:
                    await agent.aclose()
                if self._owns_bus:
                    await bus.aclose()
            log.info("swarm stopped", instance=self.instance)

    async def _run_consumer(
        self, consumer: PullConsumer, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await consumer.run(grace_s=self.grace_s, task_status=task_status)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run in the foreground until SIGTERM/SIGINT (what process managers expect).
        Signals readiness like ``run``.

        The first signal stops fetching and lets in-flight work finish within
        ``grace_s``; a second one forces the exit now (in-flight work is nak'ed, so
        it is redelivered, not lost)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_signals, tg.cancel_scope)
            await self.run(task_status=task_status)
            tg.cancel_scope.cancel()

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self._stop.is_set():
                    log.warning("second signal: forcing the exit; in-flight work is nak'ed",
                                signal=name)
                    scope.cancel()
                    return
                log.info("signal received, stopping (again to force)", signal=name,
                         grace_s=self.grace_s)
                self.stop()

    def _settings_in_force(self, agent: Agent, settings: ConsumerSettings) -> None:
        """A consumer's settings in force (an existing consumer's win): the agent decides
        with them (e.g. on its last delivery), and announces them at once."""
        agent.consumer = settings
        self._announce_now.set()

    async def _announce_loop(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        store = await self.bus.key_value(AGENTS_BUCKET, ttl_s=self.liveness_ttl_s,
                                         storage=AGENTS_STORAGE)
        keys = {a.name: f"{a.name}.{self.instance}" for a in self.agents}
        started = False
        try:
            while not self._stop.is_set():
                self._announce_now = anyio.Event()
                stalled = self.bus.stalled.status if self.bus.stalled is not None else ""
                for agent in self.agents:
                    consumers = self._consumers.get(agent.name, [])
                    all_stats = [c.stats for c in consumers]
                    settings = agent.consumer  # in force once its consumer is ensured
                    stats = ConsumerStats(
                        in_flight=sum(s.in_flight for s in all_stats),
                        handled=sum(s.handled for s in all_stats),
                        retried=sum(s.retried for s in all_stats),
                        dead_lettered=sum(s.dead_lettered for s in all_stats),
                    )
                    ann = AgentAnnouncement(
                        agent=agent.name, instance=self.instance, topics=agent.topics,
                        consumer=agent.durable, workflow=agent.workflow_name,
                        namespace=self.namespace, model=agent.model_name,
                        version=agent.version, host=socket.gethostname(), pid=os.getpid(),
                        started_at=self._started_at,
                        concurrency=settings.concurrency * agent.replicas,
                        in_flight=stats.in_flight, handled=stats.handled, failed=stats.retried,
                        dead_lettered=stats.dead_lettered,
                        settings={"ack_wait_s": settings.ack_wait_s,
                                  "max_deliver": settings.max_deliver,
                                  "max_ack_pending": settings.max_ack_pending,
                                  "concurrency": settings.concurrency},
                        stalled=stalled,
                    )
                    try:
                        await store.put(keys[agent.name], ann.model_dump_json().encode())
                    except Exception as e:  # liveness is best effort; work goes on
                        log.debug("announce failed", error=repr(e))
                if not started:
                    started = True
                    task_status.started()
                    await self._own_liveness_ttl(store.bucket)  # after start: not on its path
                with anyio.move_on_after(self.liveness_ttl_s / _ANNOUNCES_PER_TTL):
                    await self._announce_now.wait()
            if not started:  # stopped before the first announcement
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                for key in keys.values():
                    try:
                        await store.delete(key)
                    except Exception:
                        break

    async def _own_liveness_ttl(self, bucket: str) -> None:
        """Give the announcements' bucket this swarm's TTL: one made without a TTL (by
        hand, by another tool) would keep a killed agent "live" for ever."""
        try:
            info = await self.bus.js.stream_info(f"KV_{bucket}")
            config = info.config
            if abs((config.max_age or 0) - self.liveness_ttl_s) < 0.001:
                return
            log.info("setting the liveness TTL of the agents bucket", bucket=bucket,
                     was_s=config.max_age or None, ttl_s=self.liveness_ttl_s)
            config.max_age = self.liveness_ttl_s
            config.duplicate_window = min(config.duplicate_window or 120.0, self.liveness_ttl_s)
            await self.bus.js.update_stream(config)
        except Exception as e:  # liveness is best effort; work goes on
            log.warning("could not set the agents bucket's TTL", bucket=bucket, error=repr(e))

    async def __aenter__(self) -> Swarm:
        self._cm_tg = anyio.create_task_group()
        await self._cm_tg.__aenter__()
        try:
            await self._cm_tg.start(self.run)
        except BaseException:
            await self._cm_tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self.stop()
        try:
            return await self._cm_tg.__aexit__(et, e, tb)
        except BaseException as raised:
            if raised is e:
                # The task group re-raises the exception it was given; propagate it the
                # context-manager way instead. Raised again, an AsyncExitStack holding this
                # swarm chains it to itself (``e.__context__ is e``), and code that walks
                # the chain (anyio's task groups, on cancellation) loops forever.
                return False
            raise


def tune_gc() -> None:
    """Freeze what start-up made (it lives as long as the process) and collect the
    young generation every ``GC_THRESHOLD`` allocations instead of every 700. Once
    per process: later calls do nothing."""
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_THRESHOLD), gen1, gen2)
