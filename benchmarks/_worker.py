"""One benchmark stage in its own process: ``python _worker.py raw|rawpull|agent|team ...``.

``agent`` runs a swarmbus ``Agent`` (typed handler, ``ctx.publish``) in a
``Swarm`` with its defaults (dead-letter worker and announcements on);
``raw`` runs ``_raw.run_raw_stage`` (nats-py ``fetch``), ``rawpull`` runs
``_raw.run_rawpull_stage`` (hand-rolled standing pull requests); ``team`` runs
the built-in workflow's step agents for the roles named by ``--roles`` in one
``Swarm`` on scripted models (``_team.run_team``; ``--latency``,
``--sandbox``), logging like ``swarmbus up`` (JSON lines, ``--log-level``).
All print ``BENCH-READY`` once their consumer is subscribed and stop on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Work, run
from _raw import run_raw_stage, run_rawpull_stage

from swarmbus.agents import Agent, Context, Swarm, handles
from swarmbus.bus import ConsumerSettings


def stage_agent(name: str, in_topic: str, out_topic: str, settings: ConsumerSettings) -> Agent:
    """A trivial Agent: takes ``Work`` on ``in_topic``, publishes it on ``out_topic``."""

    @handles(in_topic)
    async def on_work(self: Agent, msg: Work, ctx: Context[Work]) -> None:
        await ctx.publish(
            Work(seq=msg.seq, payload=msg.payload, hops=msg.hops + 1), topic=out_topic
        )

    cls = type(f"Stage_{name}", (Agent,), {"name": name, "consumer": settings, "on_work": on_work})
    agent: Agent = cls()
    return agent


async def run_agent_stage(
    url: str,
    namespace: str,
    name: str,
    in_topic: str,
    out_topic: str,
    *,
    concurrency: int,
    batch: int,
) -> None:
    settings = ConsumerSettings(concurrency=concurrency, batch=batch)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Swarm(
        [stage_agent(name, in_topic, out_topic, settings)],
        nats=url,
        namespace=namespace,
        grace_s=10,
    ):
        print("BENCH-READY", flush=True)
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["raw", "rawpull", "agent", "team"])
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--in-topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--profile", help="write a cProfile of the worker to this file")
    team = p.add_argument_group("team")
    team.add_argument("--roles", default="architect,coder,reviewer", help="comma-separated")
    team.add_argument("--latency", type=float, default=0.0, help="model latency, seconds")
    team.add_argument("--sandbox", action="store_true", help="real sandbox (default: skipped)")
    team.add_argument("--log-level", default="INFO", help="structlog level (INFO as `up`)")
    team.add_argument("--ack-wait", type=float, default=30.0, help="consumer ack wait, seconds")
    a = p.parse_args()
    fn: Any
    if a.kind == "team":
        from _team import run_team

        from swarmbus.agents.app import configure_logging

        configure_logging("json", level=a.log_level)

        async def fn(url: str, ns: str, *_: str, concurrency: int, batch: int) -> None:
            await run_team(
                url,
                ns,
                a.roles.split(","),
                concurrency=concurrency,
                batch=batch,
                latency_s=a.latency,
                sandbox=a.sandbox,
                ack_wait_s=a.ack_wait,
            )
    else:
        fn = {"raw": run_raw_stage, "rawpull": run_rawpull_stage, "agent": run_agent_stage}[a.kind]

    def go() -> None:
        run(
            lambda: fn(
                a.url,
                a.namespace,
                a.name,
                a.in_topic,
                a.out_topic,
                concurrency=a.concurrency,
                batch=a.batch,
            ),
            use_uvloop=a.uvloop,
        )

    if a.profile:
        import cProfile

        cProfile.runctx("go()", globals(), {"go": go}, a.profile)
    else:
        go()


if __name__ == "__main__":
    main()
