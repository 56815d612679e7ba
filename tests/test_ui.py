"""``swarmbus ui`` over HTTP: what the list and a run's page say, their live updates
(Server-Sent Events), read-only routes, and the command's mistakes. The page in a real
browser is ``test_ui_browser``."""

from __future__ import annotations

import html
import re
import socket

import anyio
import httpx
import pytest
from _ui_helpers import TRACE_ID, agents, finish, served, submit_traced

from swarmbus.agents import Swarm
from swarmbus.agents.app import main as cli_main
from swarmbus.bus import SwarmClient
from swarmbus.protocols import subject

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


def text(page: str) -> str:
    """The page's words as a person reads them (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


async def test_a_run_that_ended_before_the_page_started_is_listed_and_shown(
    nats_url: str, namespace: str
) -> None:
    await finish(nats_url, namespace, "done1")
    async with served(nats_url, namespace,
                      trace_url="http://jaeger:16686/trace/{trace_id}") as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        listed = await http.get("/")
        page = await http.get("/runs/done1")
        js = await http.get("/static/htmx.min.js")
    assert listed.status_code == 200 and page.status_code == 200
    row = text(listed.text)
    assert "done1" in row and "approved" in row and "code-review" in row
    assert "$0.6250" in row  # 5 model calls at $0.125: architect, coder x2, reviewer x2
    shown = text(page.text)
    assert f"trace: {TRACE_ID}" in shown
    assert f'href="http://jaeger:16686/trace/{TRACE_ID}"' in page.text
    # the timeline: every step, with agent, model, tokens and cost; the send-back and
    # its findings; the failing then passing test report; the code's diff
    steps = re.findall(r'class="title">([^<]+)<', page.text)
    assert [html.unescape(s) for s in steps] == [
        "task submitted", "design -> implement", "implement -> review",
        "review -> implement", "implement -> review", "review -> result: approved"]
    assert "sent back to implement" in shown
    assert "[critical] → coder · calc.py : add(2, 3) must be 5" in shown
    assert "by architect t:architect 100 in / 20 out $0.1250" in shown
    assert "tests: 0 passed, 1 failed, 0 errors" in shown
    assert "tests: 1 passed, 0 failed, 0 errors" in shown
    assert "- return a - b" in shown and "+ return a + b" in shown
    # the graph: the workflow's own steps and edges, the taken ones drawn thick
    drawn = re.search(r'<pre class="mermaid">(.*?)</pre>', page.text, re.S)
    assert drawn is not None
    graph = html.unescape(drawn[1])
    assert "s_review -->|decision=revise_code max 3| s_implement" in graph
    assert "linkStyle 0,1,2,3,4 stroke:#1a7f37" in graph  # all but revise_design
    assert "class s_design,s_implement,s_review ran" in graph
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")


async def test_the_pages_follow_a_running_run_live(nats_url: str, namespace: str) -> None:
    """The run waits for a reviewer; the list and the run's event streams say so, then
    say it is approved once a reviewer starts, with no request but the streams'."""
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client, \
            Swarm(agents(roles=["architect", "coder"]), nats=nats_url, namespace=namespace,
                  grace_s=3):
        await submit_traced(client, "live1")
        with anyio.fail_after(20):
            while (await client.status("live1")).step != "review":
                await anyio.sleep(0.1)
        async with served(nats_url, namespace) as url, \
                httpx.AsyncClient(base_url=url, timeout=30) as http, \
                http.stream("GET", "/runs/live1/events") as run_events, \
                http.stream("GET", "/events") as list_events:
            assert run_events.headers["content-type"].startswith("text/event-stream")
            run_lines, list_lines = run_events.aiter_lines(), list_events.aiter_lines()
            first = await next_event(run_lines)
            assert first[0] == "run" and "running" in text(first[1])
            assert "step now: review (waiting for reviewer)" in text(first[1])
            rows = await next_event(list_lines)
            assert rows[0] == "runs" and "running" in text(rows[1])
            async with Swarm(agents(roles=["reviewer"]), nats=nats_url, namespace=namespace,
                             grace_s=3):
                with anyio.fail_after(30):
                    while "approved" not in text((event := await next_event(run_lines))[1]):
                        pass
                    while "approved" not in text((await next_event(list_lines))[1]):
                        pass
    assert "review -> result: approved" in text(event[1])


async def next_event(lines: object) -> tuple[str, str]:
    """The next Server-Sent Event (name, data) from an ``aiter_lines`` iterator."""
    assert hasattr(lines, "__anext__")
    name, data = "", []
    while True:
        line = await lines.__anext__()
        if line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data.append(line.partition(":")[2].removeprefix(" "))
        elif not line and name:
            return name, "\n".join(data)


async def test_the_page_is_read_only_and_an_unknown_run_is_404(
    nats_url: str, namespace: str
) -> None:
    async with served(nats_url, namespace) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        empty = await http.get("/")
        missing = await http.get("/runs/nope")
        posted = await http.post("/", content=b"{}")
        deleted = await http.delete("/runs/nope")
    assert "No runs in namespace" in text(empty.text) and namespace in empty.text
    assert missing.status_code == 404 and "no run 'nope'" in missing.text
    assert posted.status_code == 405 and deleted.status_code == 405


async def test_markup_in_a_goal_is_shown_as_text(nats_url: str, namespace: str) -> None:
    goal = '<img src=x onerror="alert(1)"> sum two numbers'
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
        await submit_traced(client, "xss1", goal=goal)
    async with served(nats_url, namespace) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        listed, page = await http.get("/"), await http.get("/runs/xss1")
    for body in (listed.text, page.text):
        assert "<img" not in body and "&lt;img src=x" in body


async def test_garbage_in_the_stream_is_shown_as_undecodable_not_a_crash(
    nats_url: str, namespace: str
) -> None:
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
        await submit_traced(client, "junk1")
        await client.bus.publish_raw(subject(namespace, "junk1", "step.design"),
                                     b"\xff{not json", {})
        await client.bus.publish_raw(subject(namespace, "junk1", "step.design"),
                                     b'{"state": 3}', {"Swarm-Type": "swarmbus.Work"})
    async with served(nats_url, namespace) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        listed, page = await http.get("/"), await http.get("/runs/junk1")
    assert listed.status_code == 200 and "junk1" in listed.text
    assert page.status_code == 200
    assert text(page.text).count("(undecodable message)") == 2


def test_ui_mistakes_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli_main(["ui", "--port", str(port), "--nats", "nats://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1
    assert cli_main(["ui", "--trace-url", "http://jaeger/trace/"]) == 2
    assert "has no {trace_id} to fill in" in capsys.readouterr().err


def test_ui_without_a_nats_server_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    code = cli_main(["ui", "--port", "0", "--nats", f"nats://127.0.0.1:{dead}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
