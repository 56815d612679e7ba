"""Secrets are scrubbed wherever they could leak, and never at the protocol's expense.

A value that cannot be a secret (a key of a few characters, a placeholder that local
servers document, a word of our own vocabulary) is named in a warning instead of being
scrubbed out of words; a real secret is scrubbed from bodies, custom headers and logs
but never from a subject or a header swarmbus reads. The runs go through a real
`swarmbus up` daemon, a real nats-server and the OpenAI SDK against a loopback fake."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _vendor_fakes import Canned, FakeServer, Seen, openai_body
from pydantic import SecretStr
from test_security import everything
from test_team import swarmbus_cmd

from swarmbus.agents.app import render_trail
from swarmbus.bus import (
    MASK,
    Bus,
    EmbeddedServer,
    NatsSettings,
    StoredMessage,
    SwarmClient,
    register_secret,
    scrub,
)
from swarmbus.protocols import (
    Code,
    DeadLetter,
    Design,
    SourceFile,
    TaskRequest,
    Verdict,
    headers,
    registry,
    stream_name,
)

pytestmark = pytest.mark.anyio

# What the local servers' own docs tell users to pass as a key (see bus/_secrets.py for
# the sources); each is sent as it is and named in a warning, never scrubbed.
DOCUMENTED_PLACEHOLDERS = ["ollama", "EMPTY", "token-abc123", "sk-no-key-required",
                           "lm-studio", "lmstudio", "Ollama", "empty"]
# A text made of our own words: type names, headers, statuses, topics, model names.
VOCABULARY = ("swarm.default.wf-1.step.implement swarmbus.TaskRequest/1 swarmbus.DeadLetter/1 "
              "Swarm-Causation-Id Nats-Msg-Id rounds_exhausted deadline_exceeded unknown_type "
              "revise_code ollama:qwen2.5-coder openai:gpt-4o {\"input_tokens\": 12345678}")


def long_key(prefix: str = "sk-live-") -> str:
    return prefix + secrets.token_urlsafe(24)


# -- what is registered --------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "k", "pw", "s3cr3t!",  # under 8 characters
    *DOCUMENTED_PLACEHOLDERS,
    "swarmbus", "TaskRequest", "rounds_exhausted", "Swarm-Causation-Id", "revise_code",
    "12345678",  # only digits: it would rewrite numbers
])
def test_a_value_that_cannot_be_a_secret_is_not_scrubbed_out_of_words(value: str) -> None:
    assert register_secret(value, source=f"TEST_{secrets.token_hex(4)}") is False
    assert register_secret(f"  {value}\n", source="TEST_PADDED") is False
    assert scrub(VOCABULARY) == VOCABULARY
    assert scrub(f"{value} and {value}") == f"{value} and {value}"


def test_a_real_secret_is_scrubbed_as_written_in_json_and_cut_short() -> None:
    key = long_key()
    quoted = 'pa"ss\\word-' + secrets.token_hex(8)  # as it appears inside a JSON string
    assert register_secret(key, source="TEST_KEY") is True
    assert register_secret(key, source="TEST_KEY") is True  # idempotent
    assert register_secret(quoted, source="TEST_QUOTED") is True
    eight = "k" + secrets.token_hex(4)[:7]
    assert register_secret(eight, source="TEST_EIGHT") is True  # 8 is enough
    assert scrub(f"Incorrect API key provided: {key}.") == f"Incorrect API key provided: {MASK}."
    assert scrub(f"key {key[:14]}...") == f"key {MASK}..."  # an echo cut short
    assert scrub(json.dumps({"e": f"x {quoted}"})) == json.dumps({"e": f"x {MASK}"})
    assert scrub(f"{eight}!") == f"{MASK}!"
    assert scrub(VOCABULARY) == VOCABULARY


# -- the one way out to the stream -----------------------------------------------------------


async def test_publish_scrubs_bodies_and_custom_headers_never_subjects_or_protocol_headers(
    nats_url: str, namespace: str
) -> None:
    key = long_key("sk-proj-")  # [A-Za-z0-9_-]: usable as a subject token too
    register_secret(key, source="TEST_PUBLISH_KEY")
    wf = f"wf-{key}"
    hdrs = {
        headers.TYPE: TaskRequest.swarm_type, headers.MSG_ID: f"id-{key}",
        headers.CAUSATION_ID: key, headers.SENDER: key, headers.ROUND: "2",
        headers.MODEL: f"openai:{key}", headers.WORKFLOW: key,
        "Nats-Expected-Stream": stream_name(namespace),
        "X-Provider-Said": f"Incorrect API key provided: {key}",
    }
    body = TaskRequest(goal=f"echo {key}", constraints=[key]).model_dump_json().encode()
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        await bus.publish_raw(f"swarm.{namespace}.{wf}.task", body, dict(hdrs))
        stored = await bus.last(wf, "task")
    assert stored is not None
    assert stored.subject == f"swarm.{namespace}.{wf}.task"
    for name in (headers.TYPE, headers.MSG_ID, headers.CAUSATION_ID, headers.SENDER,
                 headers.ROUND, headers.MODEL, headers.WORKFLOW):
        assert stored.headers[name] == hdrs[name], name
    assert stored.headers["X-Provider-Said"] == f"Incorrect API key provided: {MASK}"
    task = TaskRequest.model_validate_json(stored.data)
    assert (task.goal, task.constraints) == (f"echo {MASK}", [MASK])


# -- a daemon ----------------------------------------------------------------------------


DESIGN = Design(summary="slug(title) lowercases and joins words with '-'",
                files=["slug.py", "test_slug.py"]).model_dump_json()
CODE = Code(files=[
    SourceFile(path="slug.py",
               content="def slug(title):\n    return '-'.join(title.lower().split())\n"),
    SourceFile(path="test_slug.py", content="from slug import slug\n\n\n"
               "def test_slug():\n    assert slug('Hello World') == 'hello-world'\n"),
]).model_dump_json()
VERDICT = Verdict(decision="approve", summary="correct, tested").model_dump_json()
GOAL = "Write slug(title), with tests"


def team_answer(refused: str | None = None) -> Any:
    """An OpenAI-compatible server that plays the whole team (by the output schema it is
    asked for), refusing the key ``refused`` with a 401 that echoes it, as providers do."""

    def answer(seen: Seen) -> Canned | dict[str, Any]:
        if refused is not None and refused in seen.headers.get("authorization", ""):
            return Canned({"error": {
                "message": f"Incorrect API key provided: {refused}. (seen as {refused[:16]}...)",
                "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}},
                status=401)
        body = seen.body if isinstance(seen.body, dict) else {}
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("name")
        reply = {"Design": DESIGN, "Code": CODE, "CodeEdits": CODE,
                 "Verdict": VERDICT}.get(str(schema))
        if reply is None:
            return Canned({"error": {"message": f"no reply for {schema!r}"}}, status=400)
        return openai_body(reply)

    return answer


def model(name: str, url: str, key_env: str) -> dict[str, Any]:
    return {"name": name, "base_url": url + "/v1", "api_key_env": key_env, "max_retries": 0}


class Daemon:
    """`swarmbus up` in its own process, logging JSON lines to a file."""

    def __init__(self, tmp: Path, config: dict[str, Any], nats: str, env: dict[str, str]) -> None:
        tmp.mkdir(exist_ok=True)
        (tmp / "swarm.yaml").write_text(json.dumps(config))  # JSON is YAML
        self.log = tmp / "up.log"
        full = {k: v for k, v in os.environ.items()
                if not k.startswith("SWARMBUS_") and not k.endswith("_API_KEY")
                and not k.endswith("_BASE_URL")}
        full.update(env, SWARMBUS_BLOCK_REAL_MODELS="0",
                    PYTHONPATH=os.pathsep.join([str(tmp), *sys.path]))
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*swarmbus_cmd(), "up", "-c", str(tmp / "swarm.yaml"), "--nats", nats,
                 "--log-format", "json"],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env=full)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    async def ready(self) -> None:
        while not any(r.get("event") == "swarm running" for r in self.records()):
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            await anyio.sleep(0.1)

    async def stop(self) -> str:
        self.proc.terminate()
        await anyio.to_thread.run_sync(self.proc.wait, 30)
        return self.log.read_text()


def warnings_for(records: list[dict[str, Any]], setting: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == "secret not scrubbed"
            and r.get("setting") == setting]


def assert_intact(trail: list[StoredMessage], model_name: str) -> None:
    """Every message has a type we know, and each model's output names its model."""
    known = {cls.swarm_type for cls in registry}
    assert trail
    for stored in trail:
        assert stored.headers[headers.TYPE] in known, stored.headers
        assert MASK.encode() not in stored.data and MASK not in json.dumps(stored.headers)
        if stored.subject.endswith((".step.implement", ".step.review", ".result")):
            assert stored.headers[headers.MODEL] == model_name, stored.headers


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, str]]:
    password = "s3cr3t"  # as short as the NATS docs' examples
    conf = tmp_path / "auth.conf"
    conf.write_text(f'authorization {{ user: swarm, password: "{password}" }}\n')
    server = EmbeddedServer(config_file=conf)
    server.start_blocking()
    yield server, password
    server.stop_blocking()
    server.cleanup()


@pytest.mark.parametrize(("model_name", "key_env", "key"), [
    ("openai:gpt-4o", "OPENAI_API_KEY", "k"),
    ("ollama:qwen2.5-coder", "OLLAMA_API_KEY", "ollama"),
])
@pytest.mark.timeout(120)
async def test_a_short_or_placeholder_key_leaves_the_run_intact(
    tmp_path: Path, namespace: str, auth_server: tuple[EmbeddedServer, str],
    model_name: str, key_env: str, key: str,
) -> None:
    server, password = auth_server  # a NATS password too short to scrub, as well
    settings = NatsSettings(servers=[server.url], user="swarm", password=SecretStr(password))
    with FakeServer(responder=team_answer()) as fake:
        spec = model(model_name, fake.url, key_env)
        daemon = Daemon(tmp_path / "d", {
            "namespace": namespace,
            "roles": {r: {"model": spec} for r in ("architect", "coder", "reviewer")},
            "sandbox": {"isolation": "landlock"},
        }, server.url, {key_env: key, "SWARMBUS_NATS__USER": "swarm",
                        "SWARMBUS_NATS__PASSWORD": password})
        try:
            with anyio.fail_after(90):
                await daemon.ready()
                async with await SwarmClient.connect(settings, namespace=namespace) as client:
                    await client.submit(TaskRequest(goal=GOAL), workflow_id="wf1")
                    result = await client.result("wf1")
                    trail = await client.trail("wf1")
                    stream = await everything(client.bus)
        finally:
            logs = await daemon.stop()
        auths = {s.headers.get("authorization") for s in fake.requests}

    assert result.status == "approved", (result.reason, logs[-3000:])
    assert auths == {f"Bearer {key}"}  # sent as given
    # The trail is whole: type names, the model header, the model in provenance.
    assert_intact(trail, model_name)
    assert result.provenance is not None and result.provenance.name == model_name
    assert MASK.encode() not in stream
    assert not [s for s in trail if s.subject.endswith(".deadletter")]
    rendered = render_trail("wf1", trail)
    assert model_name in rendered and MASK not in rendered
    # The warnings name the settings, never the values; nothing was scrubbed out of words.
    records = daemon.records()
    for setting, value in ((key_env, key), ("nats.password", password)):
        warned = warnings_for(records, setting)
        assert len(warned) == 1, (setting, logs[-3000:])
        assert value not in warned[0].values()
        if len(value) > 1:
            assert value not in json.dumps(warned[0])
    assert MASK not in logs
    assert any(r.get("event") == "model answered" and r.get("model") == model_name
               for r in records)
    assert daemon.proc.returncode == 0, logs[-3000:]


# A custom agent that asks the provider itself with the configured key and gives up with
# the provider's answer (which echoes the key): its dead letter must not carry the key.
ECHOER = '''
import json, os, urllib.error, urllib.request

import anyio

from swarmbus.agents import Agent, Context, handles
from swarmbus.bus import Reject
from swarmbus.protocols import TaskRequest


def ask() -> str:
    req = urllib.request.Request(
        os.environ["ECHO_URL"] + "/v1/chat/completions", data=b"{}",
        headers={"authorization": "Bearer " + os.environ["OPENAI_API_KEY"],
                 "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


class Echoer(Agent):
    name = "echoer"

    @handles("task")
    async def on_task(self, msg: TaskRequest, ctx: Context[TaskRequest]) -> None:
        raise Reject("the provider said: " + await anyio.to_thread.run_sync(ask))
'''


@pytest.mark.timeout(120)
async def test_a_long_key_echoed_by_the_provider_is_scrubbed_everywhere(
    tmp_path: Path, nats_url: str, namespace: str
) -> None:
    key = long_key()
    cut = key[:16]
    workdir = tmp_path / "d"
    workdir.mkdir()
    (workdir / "echoer_agent.py").write_text(ECHOER)
    with FakeServer(responder=team_answer(refused=key)) as fake:
        local = model("ollama:qwen2.5-coder", fake.url, "OLLAMA_API_KEY")
        daemon = Daemon(workdir, {
            "namespace": namespace,
            "roles": {"architect": {"model": local}, "reviewer": {"model": local},
                      "coder": {"model": model("openai:gpt-4o", fake.url, "OPENAI_API_KEY")}},
            "agents": ["echoer_agent:Echoer"],
            "sandbox": {"isolation": "landlock"},
        }, nats_url, {"OPENAI_API_KEY": key, "OLLAMA_API_KEY": "ollama", "ECHO_URL": fake.url})
        try:
            with anyio.fail_after(90):
                await daemon.ready()
                async with await SwarmClient.connect(nats_url, namespace=namespace) as client:
                    await client.submit(TaskRequest(goal=GOAL), workflow_id="wf1")
                    result = await client.result("wf1")
                    letter = None
                    while letter is None:  # the echoer gives up on its own time
                        letter = await client.bus.last("wf1", "deadletter")
                        await anyio.sleep(0.05)
                    trail = await client.trail("wf1")
                    stream = await everything(client.bus)
        finally:
            logs = await daemon.stop()
        echoed = [s for s in fake.requests if key in s.headers.get("authorization", "")]

    assert len(echoed) == 2, fake.requests  # the coder's call (no retry) and the echoer's
    # The result says what happened, without the key.
    assert result.status == "failed", result.reason
    assert "401" in result.reason and MASK in result.reason, result.reason
    assert result.design is not None and result.code is None
    # The dead letter keeps the provider's answer, without the key, and stays whole.
    assert letter.headers[headers.TYPE] == DeadLetter.swarm_type
    dead = DeadLetter.model_validate_json(letter.data)
    assert dead.reason == "rejected" and dead.agent == "echoer"
    assert dead.subject == f"swarm.{namespace}.wf1.task"
    assert dead.headers[headers.TYPE] == TaskRequest.swarm_type
    assert "Incorrect API key provided: " + MASK in dead.error, dead.error
    assert TaskRequest.model_validate_json(dead.body).goal == GOAL
    # Nowhere: the stream (every message of the namespace), the trail, the logs.
    for text in (key, cut):
        assert text.encode() not in stream
        assert text not in logs
        assert text not in render_trail("wf1", trail)
        assert text not in result.model_dump_json()
    assert_design_intact(trail)
    assert not warnings_for(daemon.records(), "OPENAI_API_KEY")  # a real key: no warning
    assert len(warnings_for(daemon.records(), "OLLAMA_API_KEY")) == 1
    assert daemon.proc.returncode == 0, logs[-3000:]


def assert_design_intact(trail: list[StoredMessage]) -> None:
    design = [s for s in trail if s.subject.endswith(".step.implement")]
    assert len(design) == 1
    assert design[0].headers[headers.MODEL] == "ollama:qwen2.5-coder"
    assert design[0].headers[headers.TYPE] in {cls.swarm_type for cls in registry}


async def test_credentials_in_a_server_url_are_registered(nats_url: str) -> None:
    token = long_key("tok-")
    password = long_key("pw-")
    settings = NatsSettings(servers=[nats_url.replace("://", f"://swarm:{password}@"),
                                     nats_url.replace("://", f"://{token}@")],
                            connect_timeout_s=2)
    async with await Bus.connect(settings, namespace="urlcreds"):
        pass
    assert scrub(f"{password} {token}") == f"{MASK} {MASK}"

