"""Role processes and a daemon for the fault tests (``tests/test_faults.py``), and the
readers those tests count with.

As a script::

    python tests/_fault_helpers.py role ROLE NATS_URL NAMESPACE --events FILE \
        [--concurrency 16 --ack-wait 4 --latency 0.05 0.2 --post 0.1 --fake-sandbox]
    python tests/_fault_helpers.py up NATS_URL NAMESPACE

``role`` runs one scripted role (``_team_helpers.Script``) until SIGTERM and appends
a JSON line per event to ``--events`` (one file per role, shared by its restarts):

- ``call`` and ``paid``: a provider call starts and completes. They are logged
  *inside* the response cache, so they count what a provider would bill.
- ``answered``: the role got its answer (after the cache put on a miss), with
  ``from_cache``. Then the role holds the answer for ``--post`` seconds before it
  publishes: a window in which the call is paid and cached but the message is not
  yet acked, which is where a crash tests the cache.
- ``returned``: the hold is over; the role publishes and acks next.
- ``handle``: a delivery reached the role, with its delivery count.

``up`` is ``swarmbus up --offline`` with the sandbox replaced by a passing report
(1,000 real pytest runs take minutes on two cores, and the load test measures the
daemon, not pytest). With ``--peaks FILE`` it appends a line each time a consumer holds
more delivered, unsettled messages than it ever did: the exact peak of what the daemon
holds (the server's ``num_ack_pending`` also counts acks still on their way to it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio

from swarmbus.agents import Swarm
from swarmbus.agents.models import Model, ModelRequest, ModelResponse
from swarmbus.agents.workflow import SandboxPytest, StepAgent, Tool
from swarmbus.bus import Bus, ConsumerSettings, Delivery, Envelope, NatsSettings
from swarmbus.protocols import Message, SourceFile, TestReport

T = TypeVar("T", bound=Any)
HERE = Path(__file__).resolve()
ROLES = ("architect", "coder", "reviewer")
DURABLES = tuple(f"{role}@code-review" for role in ROLES)
"""The built-in workflow's role consumers (``<role>@<workflow>``)."""


class EventLog:
    """JSON lines appended to a file shared by a role's processes (O_APPEND, one write
    per line, so lines of a killed process are whole or missing, never interleaved)."""

    def __init__(self, path: Path, role: str) -> None:
        self.role = role
        self._fh: IO[str] = path.open("a", buffering=1)

    def write(self, event: str, **data: Any) -> None:
        line = {"e": event, "role": self.role, "pid": os.getpid(),
                "t": round(time.time(), 4), **data}
        self._fh.write(json.dumps(line) + "\n")


class Provider(Model):
    """The paid provider: a scripted model with random latency, logging each call."""

    def __init__(self, inner: Model, log: EventLog, latency_s: tuple[float, float]) -> None:
        self.inner, self.log, self.latency_s = inner, log, latency_s
        self.name = inner.name

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        key = request.request_hash(self.name)
        self.log.write("call", key=key)
        await anyio.sleep(random.uniform(*self.latency_s))
        response = await self.inner.complete(request)
        self.log.write("paid", key=key)
        return response


class Held(Model):
    """Outside the cache: logs the answer, then holds it for ``post_s``."""

    def __init__(self, inner: Model, log: EventLog, post_s: float) -> None:
        self.inner, self.log, self.post_s = inner, log, post_s
        self.name = inner.name

    async def complete(self, request: ModelRequest[T]) -> ModelResponse[T]:
        response = await self.inner.complete(request)
        key = request.request_hash(self.name)
        self.log.write("answered", key=key, from_cache=response.provenance.from_cache)
        await anyio.sleep(self.post_s)
        self.log.write("returned", key=key)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class Observed(StepAgent):
    """A step agent with ``Held`` around its (cached) model and a ``handle`` event per
    delivery (``log`` and ``post_s`` are set on the instance)."""

    log: EventLog
    post_s: float

    async def setup(self, bus: Bus) -> None:
        await super().setup(bus)  # wraps the provider in the response cache
        assert self.model is not None
        self.model = Held(self.model, self.log, self.post_s)

    async def dispatch(self, bus: Bus, env: Envelope[Message], delivery: Delivery) -> None:
        self.log.write("handle", delivered=delivery.delivered, seq=delivery.stream_seq)
        await super().dispatch(bus, env, delivery)


async def passing_report(files: Sequence[SourceFile]) -> TestReport:
    """Stands in for the sandbox: the submitted tests pass."""
    return TestReport(passed=1, exit_code=0, output="1 passed")


def fake_tools() -> dict[str, Tool]:
    """``sandbox.pytest`` on a runner that always passes (no pytest subprocess)."""
    return {"sandbox.pytest": SandboxPytest(passing_report)}


async def record_peaks(swarm: Swarm, path: Path) -> None:
    """Append ``{"durable", "held"}`` whenever a consumer of ``swarm`` held a new maximum
    of delivered, unsettled messages (its ``peak_in_flight``, exact however late read)."""
    peaks: Counter[str] = Counter()
    with path.open("a", buffering=1) as fh:
        while True:
            for durable, replicas in swarm.stats().items():
                held = max((s.peak_in_flight for s in replicas), default=0)
                if held > peaks[durable]:
                    peaks[durable] = held
                    fh.write(json.dumps({"durable": durable, "held": held}) + "\n")
            await anyio.sleep(0.05)


def read_peaks(path: Path) -> dict[str, int]:
    peaks: Counter[str] = Counter()
    for line in read_events(path):
        peaks[line["durable"]] = max(peaks[line["durable"]], line["held"])
    return dict(peaks)


# -- starting processes ----------------------------------------------------------------------


def spawn_role(
    role: str, nats_url: str, namespace: str, events: Path, *, concurrency: int = 16,
    ack_wait_s: float = 4.0, latency_s: tuple[float, float] = (0.05, 0.2),
    post_s: float = 0.1, fake: bool = False, tmpdir: Path | None = None,
) -> subprocess.Popen[bytes]:
    """One role in its own process; its output goes to ``<events>.log``. ``tmpdir``
    becomes its TMPDIR (where the sandbox makes its directories)."""
    args = [sys.executable, str(HERE), "role", role, nats_url, namespace,
            "--events", str(events), "--concurrency", str(concurrency),
            "--ack-wait", str(ack_wait_s), "--latency", *map(str, latency_s),
            "--post", str(post_s)]
    if fake:
        args.append("--fake-sandbox")
    env = {**os.environ, "TMPDIR": str(tmpdir)} if tmpdir else None
    with events.with_suffix(".log").open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def spawn_daemon(
    nats_url: str, namespace: str, log: Path, peaks: Path
) -> subprocess.Popen[bytes]:
    """``swarmbus up --offline`` (sandbox faked) as its own process."""
    args = [sys.executable, str(HERE), "up", nats_url, namespace, "--peaks", str(peaks)]
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in kB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# -- reading what happened -------------------------------------------------------------------


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


@dataclass
class ProcessView:
    """One process's calls, by request key, as its event log tells."""

    called: Counter[str] = field(default_factory=Counter)
    paid: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    fresh: Counter[str] = field(default_factory=Counter)
    returned: Counter[str] = field(default_factory=Counter)

    def mid_call(self) -> set[str]:
        """Provider calls started and not completed."""
        return set((self.called - self.paid).keys())

    def paid_not_cached(self) -> set[str]:
        """Completed at the provider, the cache put not confirmed yet."""
        return set((self.paid - self.answered).keys())

    def held(self) -> set[str]:
        """Answered (so cached), not yet published."""
        return set((self.answered - self.returned).keys())

    def held_fresh(self) -> set[str]:
        """Held, and paid by this process (not served from the cache)."""
        return self.held() & set(self.fresh)


    def add(self, e: dict[str, Any]) -> None:
        counter = {"call": self.called, "paid": self.paid, "answered": self.answered,
                   "returned": self.returned}.get(e["e"])
        if counter is not None:
            counter[e["key"]] += 1
            if e["e"] == "answered" and not e["from_cache"]:
                self.fresh[e["key"]] += 1


class Follow:
    """One process's view, kept current by reading only what its event file gained since
    the last ``read`` (whole lines; a poll that re-parsed the whole file every 10 ms fell
    ever further behind the process it watched)."""

    def __init__(self, path: Path, pid: int) -> None:
        self.path, self.pid, self.view = path, pid, ProcessView()
        self._offset = 0

    def read(self) -> ProcessView:
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(whole)
        for line in whole.splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:  # a line cut by SIGKILL
                continue
            if e["pid"] == self.pid:
                self.view.add(e)
        return self.view


async def subject_counts(bus: Bus, topic: str) -> dict[str, int]:
    """How many messages each workflow has on ``topic`` (from the stream's subject index)."""
    prefix = f"swarm.{bus.namespace}."
    info = await bus.js.stream_info(bus.stream_name, subjects_filter=f"{prefix}*.{topic}")
    subjects = info.state.subjects or {}
    return {s[len(prefix):-len(topic) - 1]: n for s, n in subjects.items()}


# -- entry points ----------------------------------------------------------------------------


async def _serve_role(a: argparse.Namespace) -> None:
    from _team_helpers import Script, team

    log = EventLog(a.events, a.role)
    model = Provider(Script(prefix="f").models()[a.role], log, (a.latency[0], a.latency[1]))
    settings = ConsumerSettings(ack_wait_s=a.ack_wait, concurrency=a.concurrency,
                                max_deliver=10, retry_delay_s=0.2)
    agents = team({a.role: model}, roles=[a.role], consumers={a.role: settings},
                  classes={a.role: Observed}, tools=fake_tools() if a.fake_sandbox else None,
                  supervisor=a.role == "reviewer")
    for agent in agents:
        if isinstance(agent, Observed):
            agent.log, agent.post_s = log, a.post
    nats = NatsSettings(servers=[a.nats], reconnect_wait_s=0.25)
    await Swarm(agents, nats=nats, namespace=a.namespace, grace_s=5).serve()


async def _serve_daemon(a: argparse.Namespace) -> None:
    """What ``swarmbus up --offline --nats URL`` runs, with the sandbox faked."""
    from swarmbus.agents.app import build_agents, configure_logging, load_config

    configure_logging("json")
    cfg = load_config(None, offline=True, namespace=a.namespace, nats={"servers": a.nats})
    swarm = Swarm(build_agents(cfg, tools=fake_tools()), nats=cfg.nats,
                  namespace=cfg.namespace, grace_s=cfg.grace_s)
    async with anyio.create_task_group() as tg:
        if a.peaks:
            tg.start_soon(record_peaks, swarm, a.peaks)
        await swarm.serve()
        tg.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("role")
    p.add_argument("role", choices=ROLES)
    p.add_argument("nats")
    p.add_argument("namespace")
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--ack-wait", type=float, default=4.0)
    p.add_argument("--latency", type=float, nargs=2, default=[0.05, 0.2])
    p.add_argument("--post", type=float, default=0.1)
    p.add_argument("--fake-sandbox", action="store_true")
    p = sub.add_parser("up")
    p.add_argument("nats")
    p.add_argument("namespace")
    p.add_argument("--peaks", type=Path)
    a = ap.parse_args(argv)
    anyio.run(_serve_role if a.command == "role" else _serve_daemon, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
