"""The builder of a fan-out in its own process, for ``tests/test_fanout_faults.py``.

As a script::

    python tests/_fanout_kill_helpers.py NATS_URL NAMESPACE --events FILE \
        [--replica r1 --hold 0 --hold-after 0 --ack-wait 3 --concurrency 8]

runs the ``builder`` role of ``compiled()`` until SIGTERM, with the response cache on,
and appends a JSON line per event to ``--events`` (one file shared by every builder
process; each line carries its ``pid``):

- ``handle``: a delivery reached the role (``delivered``: its delivery count);
- ``call`` and ``built``: the builder's model starts and finishes building ``item``
  (logged *inside* the response cache: they count what a provider would bill);
- ``recorded``: the item's completion was appended to the record, at ``position``;
- ``after``: the completion at ``position`` starts publishing what it releases (a
  redelivery whose completion was recorded before comes here without ``recorded``);
  then the role holds for ``--hold`` seconds (a window in which the completion is
  recorded and nothing it releases is published yet), and ``published`` follows
  (``completes``: whether this completion finished the set, so published the join
  unless the record's ``fired`` mark says it was published before), then a hold of
  ``--hold-after`` seconds (published, the delivery not yet acked).

Each item's prompt says how long its build takes (``Part.delay_s``), so the test sets
where each item is when it kills the process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import anyio
from pydantic import BaseModel

from swarmbus.agents import Swarm
from swarmbus.agents.models import FunctionModel
from swarmbus.agents.workflow import Fanouts, StepAgent, compile_workflow, team
from swarmbus.bus import Bus, ConsumerSettings, Delivery, Envelope, NatsSettings
from swarmbus.protocols import (
    CompiledWorkflow,
    ItemResult,
    Message,
    Text,
    Workflow,
    WorkItem,
    data_type,
)

HERE = Path(__file__).resolve()
CACHE_TTL_S = 600.0


class Part(BaseModel):
    name: str
    spec: str
    delay_s: float = 0.1


@data_type("tests.KillPlan")
class KillPlan(BaseModel):
    parts: list[Part]


SPEC: dict[str, Any] = {
    "name": "fan-kill",
    "artifacts": {"plan": "tests.KillPlan", "piece": "swarmbus.Text", "whole": "swarmbus.Text"},
    "steps": [
        {"id": "plan", "role": "planner", "output": "plan"},
        {"id": "build", "role": "builder", "output": "piece", "for_each": "plan.parts",
         "as": "part",
         "task": "Build {{ part.name }} to spec {{ part.spec }} in {{ part.delay_s }} s."},
        {"id": "merge", "role": "merger", "join": "build", "input": "piece",
         "output": "whole"},
    ],
}


def compiled() -> CompiledWorkflow:
    return compile_workflow(Workflow.parse(SPEC))


def built_text(name: str, spec: str) -> str:
    """What the builder answers for an item: a function of that item's input alone."""
    return f"built {name} from {spec}"


def user_text(request: Any) -> str:
    return "\n".join(str(m.content) for m in request.messages)


class EventLog:
    """JSON lines appended to a file shared by the builder's processes (one write per
    line, so a line of a killed process is whole or missing)."""

    def __init__(self, path: Path, replica: str) -> None:
        self.replica = replica
        self._fh: IO[str] = path.open("a", buffering=1)

    def write(self, event: str, **data: Any) -> None:
        line = {"e": event, "pid": os.getpid(), "replica": self.replica,
                "t": round(time.time(), 4), **data}
        self._fh.write(json.dumps(line) + "\n")


def builder_model(log: EventLog) -> FunctionModel:
    async def build(request: Any) -> Text:
        text = user_text(request)
        words = text.split("Build ", 1)[1].split()
        name, spec, delay_s = words[0], words[3], float(words[5])
        log.write("call", item=name)
        await anyio.sleep(delay_s)
        log.write("built", item=name)
        return Text(text=built_text(name, spec))

    return FunctionModel(build, name="t:builder")


class LoggedFanouts(Fanouts):
    """Logs each completion's record and publish, and holds between the two."""

    def __init__(self, log: EventLog, hold_s: float, hold_after_s: float) -> None:
        super().__init__()
        self.log, self.hold_s, self.hold_after_s = log, hold_s, hold_after_s

    async def record(self, ctx: Any, item: WorkItem, result: ItemResult[Any],
                     ) -> tuple[int, list[tuple[int, bool]]]:
        position, done = await super().record(ctx, item, result)
        self.log.write("recorded", index=item.index, position=position)
        return position, done

    async def after(self, ctx: Any, wf: Any, step: Any, work: Any, plan: Any, items: Any,
                    position: int, *args: Any, **kw: Any) -> Any:
        self.log.write("after", index=work.item.index, position=position)
        await anyio.sleep(self.hold_s)
        progress = await super().after(ctx, wf, step, work, plan, items, position, *args, **kw)
        self.log.write("published", index=work.item.index, position=position,
                       completes=progress.completed_at == position)
        await anyio.sleep(self.hold_after_s)
        return progress


class LoggedBuilder(StepAgent):
    """The builder with ``LoggedFanouts`` and a ``handle`` event per delivery (``log``
    and the holds are set on the class by ``_serve``)."""

    log: EventLog
    hold_s: float = 0.0
    hold_after_s: float = 0.0

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.fanouts = LoggedFanouts(self.log, self.hold_s, self.hold_after_s)

    async def dispatch(self, bus: Bus, env: Envelope[Message], delivery: Delivery) -> None:
        self.log.write("handle", delivered=delivery.delivered, seq=delivery.stream_seq)
        await super().dispatch(bus, env, delivery)


def spawn_builder(nats_url: str, namespace: str, events: Path, *, replica: str = "r1",
                  hold_s: float = 0.0, hold_after_s: float = 0.0, ack_wait_s: float = 3.0,
                  concurrency: int = 8) -> subprocess.Popen[bytes]:
    """One builder in its own process; its output goes to ``<events>.<replica>.log``."""
    args = [sys.executable, str(HERE), nats_url, namespace, "--events", str(events),
            "--replica", replica, "--hold", str(hold_s), "--hold-after", str(hold_after_s),
            "--ack-wait", str(ack_wait_s),
            "--concurrency", str(concurrency)]
    with events.with_suffix(f".{replica}.log").open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by SIGKILL
            continue
    return out


async def _serve(a: argparse.Namespace) -> None:
    LoggedBuilder.log = EventLog(a.events, a.replica)
    LoggedBuilder.hold_s, LoggedBuilder.hold_after_s = a.hold, a.hold_after
    settings = ConsumerSettings(ack_wait_s=a.ack_wait, concurrency=a.concurrency,
                                max_deliver=10, retry_delay_s=0.2)
    agents = team(compiled(), models={"builder": builder_model(LoggedBuilder.log)},
                  roles=["builder"], tools={}, consumers={"builder": settings},
                  classes={"builder": LoggedBuilder}, cache_ttl_s=CACHE_TTL_S,
                  supervisor=False)
    nats = NatsSettings(servers=[a.nats], reconnect_wait_s=0.25)
    await Swarm(agents, nats=nats, namespace=a.namespace, grace_s=5).serve()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("nats")
    ap.add_argument("namespace")
    ap.add_argument("--events", type=Path, required=True)
    ap.add_argument("--replica", default="r1")
    ap.add_argument("--hold", type=float, default=0.0)
    ap.add_argument("--hold-after", type=float, default=0.0)
    ap.add_argument("--ack-wait", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=8)
    anyio.run(_serve, ap.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
