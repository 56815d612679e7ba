"""``swarmbus ui`` over HTTP: what the list and a run's page say, their live updates
(Server-Sent Events), read-only routes, and the command's mistakes. The page in a real
browser is ``test_ui_browser``."""

from __future__ import annotations

import html
import re
import socket
from urllib.parse import quote

import anyio
import httpx
import pytest
from _ui_helpers import (
    TRACE_ID,
    agents,
    finish,
    served,
    submit_traced,
    waiting_at_review,
)
from pydantic import BaseModel

from swarmbus.agents import Swarm
from swarmbus.agents.app import main as cli_main
from swarmbus.agents.models import FunctionModel
from swarmbus.agents.workflow import compile_workflow
from swarmbus.agents.workflow import team as workflow_team
from swarmbus.bus import SwarmClient
from swarmbus.protocols import TaskRequest, Text, Workflow, data_type, subject

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
    # the approving verdict's own finding, on the step that ended the run
    assert "looks right [minor] → coder · calc.py:1 : name the parameters" in shown
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
    async with waiting_at_review(nats_url, namespace, "live1"), \
            served(nats_url, namespace) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as http, \
            http.stream("GET", "/runs/live1/events") as run_events, \
            http.stream("GET", "/events") as list_events:
        assert run_events.headers["content-type"].startswith("text/event-stream")
        run_lines, list_lines = run_events.aiter_lines(), list_events.aiter_lines()
        first = await next_event(run_lines)
        assert first[0] == "head" and "live1 waiting" in text(first[1])
        assert "step now: review (waiting for reviewer)" in text(first[1])
        timeline = await next_event(run_lines)
        assert timeline[0] == "timeline" and "implement -> review" in text(timeline[1])
        graph = await next_event(run_lines)  # no graph hash given: it is sent
        assert graph[0] == "graph" and graph[1].startswith("flowchart TD")
        assert "class s_review now" in graph[1]
        rows = await next_event(list_lines)  # no version given: the whole list
        assert rows[0] == "runs" and "waiting review (no reviewer running)" in text(rows[1])
        async with Swarm(agents(roles=["reviewer"]), nats=nats_url, namespace=namespace,
                         grace_s=3):
            with anyio.fail_after(30):
                while (event := await next_event(run_lines))[0] != "head" or \
                        "approved" not in text(event[1]):
                    pass
                while (row := await next_event(list_lines))[0] != "rows" or \
                        "approved" not in text(row[1]):
                    pass
    assert 'hx-swap-oob="outerHTML"' in row[1] and 'id="run-live1"' in row[1]


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


class Part(BaseModel):
    name: str


@data_type("tests.UiPlan")
class UiPlan(BaseModel):
    parts: list[Part]


async def test_a_fan_out_is_one_entry_and_its_join_lists_each_item(
    nats_url: str, namespace: str
) -> None:
    wf = compile_workflow(Workflow.parse({
        "name": "fan", "artifacts": {"plan": "tests.UiPlan", "piece": "swarmbus.Text",
                                     "whole": "swarmbus.Text"},
        "steps": [{"id": "plan", "role": "planner", "output": "plan"},
                  {"id": "build", "role": "builder", "output": "piece", "max_parallel": 2,
                   "for_each": "plan.parts", "as": "part", "task": "Build {{ part.name }}"},
                  {"id": "merge", "role": "merger", "join": "build", "input": "piece",
                   "output": "whole"}]}))
    models = {
        "planner": FunctionModel(lambda r: UiPlan(parts=[Part(name=n) for n in "abcd"]),
                                 name="t:planner"),
        "builder": FunctionModel(lambda r: Text(text="built"), name="t:builder"),
        "merger": FunctionModel(lambda r: Text(text="merged"), name="t:merger")}
    async with (Swarm(workflow_team(wf, models=models, tools={}), nats=nats_url,
                      namespace=namespace, grace_s=3),
                await SwarmClient.connect(nats_url, namespace=namespace) as client):
        await client.submit(TaskRequest(goal="build it", workflow="fan"), workflow_id="fan1")
        with anyio.fail_after(30):
            assert (await client.result("fan1")).status == "approved"
    async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
        # no agent runs now: this task waits at the entry step of the workflow it names
        await submit_traced(client, "fan2", workflow="fan")
    async with served(nats_url, namespace) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        page = await http.get("/runs/fan1")
        waiting = await http.get("/runs/fan2")
    shown_waiting = text(waiting.text)
    assert "fan2 waiting step now: plan (waiting for planner) workflow: fan" in shown_waiting
    assert "class s_plan now" in html.unescape(waiting.text)
    steps = [html.unescape(t) for t in re.findall(r'class="title">([^<]+)<', page.text)]
    assert steps == ["task submitted", "plan -> build", "build -> merge",
                     "merge -> result: approved"]
    shown = text(page.text)
    assert "4 of 4 items: a, b, c, d" in shown  # the items published, two at a time
    assert all(f" {k} ok t:builder $0.0000 " in shown for k in "abcd")


async def test_the_page_is_read_only_and_an_unknown_run_is_404(
    nats_url: str, namespace: str
) -> None:
    await (await SwarmClient.connect(nats_url, namespace=namespace)).aclose()  # its streams
    async with served(nats_url, namespace) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        empty = await http.get("/")
        missing = await http.get("/runs/nope")
        odd = [await http.get(f"/runs/{quote(bad)}") for bad in ("a b", "a.b", "a*", ">")]
        posted = await http.post("/", content=b"{}")
        deleted = await http.delete("/runs/nope")
    assert "No runs in namespace" in text(empty.text) and namespace in empty.text
    assert missing.status_code == 404 and "no run 'nope'" in missing.text
    assert [r.status_code for r in odd] == [404] * 4
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
        # your own agent's message on its own topic, with no run behind it: no run
        await client.bus.publish_raw(subject(namespace, "wf1", "audit.request"),
                                     b'{"text": "hello"}', {})
    async with served(nats_url, namespace) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        listed, page = await http.get("/"), await http.get("/runs/junk1")
    assert listed.status_code == 200 and "junk1" in listed.text
    assert "wf1" not in listed.text
    assert page.status_code == 200
    assert text(page.text).count("(undecodable message)") == 2


def test_ui_reads_and_never_creates_a_namespace(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def streams() -> set[str]:
        import nats

        nc = await nats.connect(nats_url)
        try:
            return {str(s.config.name) for s in await nc.jetstream().streams_info()}
        finally:
            await nc.close()

    before = anyio.run(streams)
    assert cli_main(["ui", "--port", "0", "--nats", nats_url, "--namespace", "nosuchns"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: namespace 'nosuchns' has no stream on this NATS server")
    assert err.count("\n") == 1
    assert anyio.run(streams) == before  # nothing made


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
    assert cli_main(["ui", "--port", "70000"]) == 2
    port_err = "error: --port 70000 is not a port (0-65535; 0: any free one)\n"
    assert capsys.readouterr().err == port_err
    assert cli_main(["ui", "--host", "999.1.1.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host '999.1.1.1' is not an address of this machine")


def test_ui_without_a_nats_server_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    code = cli_main(["ui", "--port", "0", "--nats", f"nats://127.0.0.1:{dead}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
