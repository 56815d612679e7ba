"""A daemon killed with SIGKILL: its embedded nats-server does not outlive it, a restart
on the same port and data directory takes over (an orphaned server of that directory
included) and finishes the work waiting in the stream, and ``status`` stops calling a
killed worker's role "working" once its liveness has expired."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import pytest

from swarmbus.bus import (
    AGENTS_BUCKET,
    Bus,
    EmbeddedServer,
    SwarmClient,
    find_nats_server,
    free_port,
)
from swarmbus.protocols import Meta, TaskRequest

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SWARMBUS = [sys.executable, "-m", "swarmbus.agents.app"]
GOAL = "Write fizzbuzz(n) for 1..n"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBUS_")}


def up(cwd: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``swarmbus up --offline`` in ``cwd`` (data in ``cwd/.swarmbus``), logging to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen([*SWARMBUS, "up", "--offline", "--log-format", "json", *args],
                                cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)


async def ready(proc: subprocess.Popen[bytes], log: Path, *, seen: int = 0) -> None:
    """Until the daemon's log (from line ``seen`` on) says it runs."""
    while not any(event(line) == "swarmbus up" for line in log.read_text().splitlines()[seen:]):
        assert proc.poll() is None, log.read_text()[-3000:]
        await anyio.sleep(0.05)


def event(line: str) -> str:
    return str(json.loads(line)["event"]) if line.startswith("{") else ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    while proc.poll() is None:
        await anyio.sleep(0.05)
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.mark.timeout(180)
async def test_up_killed_with_sigkill_takes_its_server_along_and_restarts_on_the_same_port(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    log = tmp_path / "up.log"
    # The first daemon runs no coder: the workflow waits in the stream for one.
    (tmp_path / "swarm.yaml").write_text("roles:\n  coder: {run: false}\n")
    with anyio.fail_after(150):
        first = up(tmp_path, log, "-c", "swarm.yaml", "--port", str(port))
        procs.append(first)
        await ready(first, log)
        pid_file = tmp_path / ".swarmbus" / "nats" / "nats-server.pid"
        server_pid = int(pid_file.read_text())
        async with await SwarmClient.connect(url) as client:
            wf = await client.submit(TaskRequest(goal=GOAL), workflow_id="crash-1")
            while (await client.status(wf)).last_topic != "step.implement":
                await anyio.sleep(0.05)
            assert (await client.status(wf)).live is False  # no coder: it waits

        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        # The embedded server does not outlive its daemon (it stops cleanly).
        while alive(server_pid):
            await anyio.sleep(0.05)
        assert "Server Exiting" in (tmp_path / ".swarmbus" / "nats" / "nats-server.log"
                                    ).read_text()

        # A supervisor's restart: same port, same data directory, now with every role.
        seen = len(log.read_text().splitlines())
        second = up(tmp_path, log, "--port", str(port))
        procs.append(second)
        await ready(second, log, seen=seen)
        async with await SwarmClient.connect(url) as client:
            result = await client.result("crash-1", timeout_s=60)
        assert result.status == "approved"
        await stop(second, log)


@pytest.mark.timeout(180)
async def test_up_takes_over_an_orphaned_server_of_its_data_directory(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """A nats-server left serving the data directory by a daemon that had no guard (an
    older swarmbus killed with SIGKILL) is stopped cleanly and replaced: the work it
    stored is finished; the restart does not fail on a taken port."""
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    store = tmp_path / ".swarmbus" / "nats"
    store.mkdir(parents=True)
    with (store / "orphan.log").open("wb") as out:  # as older versions started it
        orphan = subprocess.Popen(
            [find_nats_server(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
             ".swarmbus/nats/jetstream"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    procs.append(orphan)
    log = tmp_path / "up.log"
    with anyio.fail_after(150):
        while True:
            try:
                client = await SwarmClient.connect(url)
                break
            except Exception:
                assert orphan.poll() is None, (store / "orphan.log").read_text()
                await anyio.sleep(0.05)
        async with client:
            await client.submit(TaskRequest(goal=GOAL), workflow_id="orphaned-1")

        daemon = up(tmp_path, log, "--port", str(port))
        procs.append(daemon)
        await ready(daemon, log)
        assert orphan.poll() == 0, "the orphan is stopped cleanly (SIGTERM), not killed"
        taken = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        warned = [x for x in taken if x["event"].startswith("stopping an orphaned nats-server")]
        assert [x["pid"] for x in warned] == [orphan.pid]
        async with await SwarmClient.connect(url) as client:
            result = await client.result("orphaned-1", timeout_s=60)
        assert result.status == "approved"

        # A second daemon on the same data directory while the first lives: refused.
        other = subprocess.run([*SWARMBUS, "up", "--offline", "--port", str(free_port())],
                               cwd=tmp_path, capture_output=True, text=True, env=ENV,
                               timeout=60)
        assert other.returncode == 2
        assert other.stderr.strip().splitlines()[-1] == (
            f"error: the data directory .swarmbus/nats is in use by another running process "
            f"(pid {daemon.pid}) with its own nats-server: stop it, or give another data "
            "directory")
        await stop(daemon, log)


SWARM_PROC = textwrap.dedent("""
    import sys
    import anyio
    from swarmbus.agents import Swarm
    from swarmbus.agents.app import build_agents, load_config

    async def main(url, namespace):
        cfg = load_config(None, environ={}, offline=True, namespace=namespace)
        async with Swarm(build_agents(cfg), nats=url, namespace=namespace,
                         liveness_ttl_s=1.0):
            print("ready", flush=True)
            await anyio.sleep_forever()

    anyio.run(main, sys.argv[1], sys.argv[2])
""")


@pytest.mark.timeout(120)
async def test_status_stops_saying_working_once_a_killed_workers_liveness_expired(
    nats_url: str, namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        # A bucket made without a TTL (by hand, by another tool; file storage too): the swarm
        # gives it its own; left as it was, a killed agent's announcement would never expire.
        agents = await bus.key_value(AGENTS_BUCKET)
        script = tmp_path / "swarm_proc.py"
        script.write_text(SWARM_PROC)
        proc = subprocess.Popen([sys.executable, str(script), nats_url, namespace],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
        procs.append(proc)
        with anyio.fail_after(60):
            assert proc.stdout is not None
            seen: list[bytes] = []
            while not seen or seen[-1].strip() != b"ready":  # its log lines, then "ready"
                seen.append(await anyio.to_thread.run_sync(proc.stdout.readline))
                assert seen[-1], b"".join(seen)
            mine = [k for k in await agents.keys() if f"-{proc.pid}-" in k]
            assert sorted(k.split(".")[0] for k in mine) == [
                "architect", "coder", "reviewer", "supervisor"]
            info = await bus.js.stream_info(f"KV_{agents.bucket}")
            while info.config.max_age != 1.0:  # set once the swarm has announced itself
                await anyio.sleep(0.05)
                info = await bus.js.stream_info(f"KV_{agents.bucket}")

            proc.kill()
            proc.wait()
            proc.stdout.close()
            # Work for the killed process's architect, submitted after its death.
            async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
                await client.submit(TaskRequest(goal=GOAL), workflow_id="after-kill")
                while any(f"-{proc.pid}-" in k for k in await agents.keys()):
                    await anyio.sleep(0.1)  # its announcements expire: no one refreshes them
            done = await anyio.run_process(
                [*SWARMBUS, "status", "after-kill", "--nats", nats_url, "--namespace",
                 namespace, "--json"], check=False, env=ENV)
            text = await anyio.run_process(
                [*SWARMBUS, "status", "after-kill", "--nats", nats_url, "--namespace",
                 namespace], check=False, env=ENV)
    status = json.loads(done.stdout)  # warnings (the bucket's storage) go to stderr
    assert b"bucket has other storage than asked" in done.stderr
    assert (status["role"], status["live"], status["working"]) == (
        "architect", False, "waiting for architect")
    assert text.stdout.decode().startswith(
        f"after-kill: running; waiting: no architect is running in namespace {namespace} "
        "for workflow code-review")


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def test_the_server_outlives_the_thread_that_started_it_not_the_process() -> None:
    """Started from a thread that then ends (as an anyio worker thread does when idle),
    the server runs on; its guard killed with SIGKILL, the server stops too (Linux:
    the kernel signals it)."""
    server = EmbeddedServer()
    starter = threading.Thread(target=server.start_blocking)
    starter.start()
    starter.join()
    try:
        async with await Bus.connect(server.url, namespace="thread") as bus:
            await bus.publish("w", "task", TaskRequest(goal="still here"), Meta("t-1"))
        assert server.pid is not None and alive(server.pid)
        if not sys.platform.startswith("linux"):
            return
        pid, guard = server.pid, ppid(server.pid)
        assert guard != os.getpid()  # the guard sits between us and the server
        os.kill(guard, signal.SIGKILL)
        with anyio.fail_after(30):
            while alive(pid):
                await anyio.sleep(0.05)
        assert await server.wait() == -signal.SIGKILL
    finally:
        await server.stop()
        server.cleanup()
