"""examples/custom_agent.py runs as its own process, answers on its topics, stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from agent_proc import until, until_true, wait_announced

from swarmbus.bus import AGENTS_BUCKET, AGENTS_STORAGE, Bus
from swarmbus.protocols import Code, Meta, SourceFile, TaskRequest, Work, WorkState, subject

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_agent.py"


@pytest.fixture
def example(nats_url: str, namespace: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The example as its own process, the way a user runs it."""
    with (tmp_path / "example.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--nats", nats_url, "--namespace", namespace],
            stdout=out, stderr=subprocess.STDOUT,
        )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


async def test_custom_agent_example(
    example: subprocess.Popen[bytes], nats_url: str, namespace: str, tmp_path: Path
) -> None:
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        with anyio.fail_after(15):
            await wait_announced(bus, "word_counter", [example.pid])
            # What a non-Python peer does: plain JSON on the topic, no headers.
            text = b'{"text": "the cat and the hat\\nTODO: the end"}'
            await bus.publish_raw(subject(namespace, "wf1", "audit.request"), text)
            # And a message of the team's own, on a topic the built-in reviewer also takes.
            files = [SourceFile(path="a.py", content="x = 1  # TODO\ny = x\n")]
            state = WorkState(task=TaskRequest(goal="g"),
                              artifacts={"code": Code(files=files).model_dump()})
            await bus.publish("wf2", "step.review", Work(state=state), Meta("code-1"))
            first = await until(lambda: bus.last("wf1", "audit.report"))
            second = await until(lambda: bus.last("wf2", "audit.report"))
    assert first.headers["Swarm-Type"] == "example.AuditReport/1"
    assert first.headers["Swarm-Sender"] == "word_counter"
    assert json.loads(first.data) == {
        "words": 8, "lines": 2, "top_words": ["the", "cat", "and"], "todos": 1,
    }
    assert json.loads(second.data) == {
        "words": 8, "lines": 2, "top_words": ["x", "=", "1"], "todos": 1,
    }
    assert second.headers["Swarm-Causation-Id"] == "code-1"

    example.send_signal(signal.SIGTERM)
    with anyio.fail_after(15):
        await until_true(lambda: example.poll() is not None)
    log = (tmp_path / "example.log").read_text()
    assert example.returncode == 0, log
    assert "signal received" in log
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        live = await (await bus.key_value(AGENTS_BUCKET, ttl_s=20, storage=AGENTS_STORAGE)).keys()
    assert not [k for k in live if f"-{example.pid}-" in k], "its announcement is withdrawn"
