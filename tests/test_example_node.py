"""The Node.js kick-off example, run with the official `nats` npm client against
a real swarm (offline models). Runs wherever node and npm exist: the test
installs the example's dependencies itself (`npm ci`, from its lock file)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from swarmbus.agents import Swarm
from swarmbus.agents.app import build_agents, load_config
from swarmbus.bus import EXPECT_FIRST, Bus

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")


async def install_example_dependencies() -> None:
    """``npm ci`` in the example, unless its lock file's packages are already there."""
    if (EXAMPLE / "node_modules" / "nats" / "package.json").is_file():
        return
    assert NPM is not None
    with anyio.fail_after(300):
        done = await anyio.run_process(
            [NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=EXAMPLE, check=False, stderr=subprocess.PIPE,
        )
    assert done.returncode == 0, f"npm ci failed: {done.stderr.decode()}"


@pytest.mark.skipif(NODE is None or NPM is None, reason="needs node and npm")
@pytest.mark.timeout(420)
async def test_node_client_kicks_off_and_reads_result(nats_url: str, namespace: str) -> None:
    assert NODE is not None
    await install_example_dependencies()
    cfg = load_config(None, environ={}, offline=True, namespace=namespace)

    async def kickoff(goal: str) -> subprocess.CompletedProcess[bytes]:
        return await anyio.run_process(
            [NODE, str(EXAMPLE / "kickoff.mjs"), "--nats", nats_url, "--namespace",
             namespace, "--id", "node-wf-1", goal], check=False, stderr=subprocess.PIPE)

    async with Swarm(build_agents(cfg), nats=nats_url, namespace=namespace, grace_s=2):
        with anyio.fail_after(60):
            proc = await kickoff("Write fizzbuzz(n) for 1..n")
            again = await kickoff("Write fizzbuzz(n) for 1..n")  # the same command, again
            other = await kickoff("Write a web server")  # another task under a used id
            async with await Bus.connect(nats_url, namespace=namespace) as bus:
                stored = await bus.last("node-wf-1", "task")
                tasks = [m for m in await bus.history("node-wf-1") if m.subject.endswith(".task")]
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["workflow_id"] == "node-wf-1"
    assert result["status"] == "approved"
    assert result["code_revisions"] == 1  # the scripted coder's first fizzbuzz fails its tests
    assert {f["path"] for f in result["code"]["files"]} == {"fizzbuzz.py", "test_fizzbuzz.py"}
    # The task went out as the README tells raw publishers: once, first on its subject.
    assert stored is not None and stored.headers[EXPECT_FIRST] == "0"
    assert stored.headers["Nats-Msg-Id"] == "task-node-wf-1" and len(tasks) == 1
    # Run again, the same command joins its workflow; another goal is refused in one line.
    assert again.returncode == 0, again.stderr.decode()
    assert json.loads(again.stdout) == result
    assert again.stderr.decode().strip() == "joined node-wf-1 (already submitted)"
    assert other.returncode == 2 and other.stdout == b""
    assert other.stderr.decode().strip() == (
        f"error: workflow id node-wf-1 is taken by another task in namespace {namespace}; "
        "choose another --id (or none for a random one)")
