"""Security: the swarm under NATS authentication (user/password, nkey), a clear and quick
refusal of wrong credentials, the subject permissions of examples/nats/permissions.conf
(a custom agent that may only read `code` and publish its own findings), no secrets in
logs, trails or the sandbox, and sandboxed code that cannot write outside its directory."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.errors
import nats.js.errors
import nkeys  # type: ignore[import-untyped]
import pytest
from _team_helpers import GOAL, Script, team
from pydantic import SecretStr
from test_team import swarmbus_cmd

from swarmbus.agents import Agent, Context, Swarm, handles
from swarmbus.agents.app import main as cli_main
from swarmbus.agents.sandbox import landlock_abi
from swarmbus.bus import (
    AGENTS_BUCKET,
    AGENTS_STORAGE,
    Bus,
    BusUnavailableError,
    EmbeddedServer,
    NatsSettings,
    SwarmClient,
    free_port,
)
from swarmbus.protocols import (
    Code,
    Design,
    Message,
    Meta,
    SourceFile,
    TaskRequest,
    TaskResult,
    Work,
    WorkState,
    message_type,
    namespace_filter,
)

pytestmark = pytest.mark.anyio

EXAMPLE_CONF = Path(__file__).resolve().parent.parent / "examples" / "nats" / "permissions.conf"


@pytest.fixture
def servers() -> Iterator[list[EmbeddedServer]]:
    """Servers a test starts (with its own auth config); all stopped at the end."""
    started: list[EmbeddedServer] = []
    yield started
    for s in started:
        s.stop_blocking()
        s.cleanup()


def start_server(servers: list[EmbeddedServer], conf: Path, **env: str) -> EmbeddedServer:
    """A nats-server with ``conf``; ``env`` reaches the server process (``$VAR`` in conf)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        server = EmbeddedServer(config_file=conf)
        servers.append(server)
        return server.start_blocking()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def run_one(settings: NatsSettings, namespace: str, wf: str = "wf1") -> TaskResult:
    async with (
        Swarm(team(Script().models()), nats=settings, namespace=namespace, grace_s=3),
        await SwarmClient.connect(settings, namespace=namespace) as client,
    ):
        await client.submit(TaskRequest(goal=GOAL), workflow_id=wf)
        return await client.result(wf)


async def refused(settings: NatsSettings) -> tuple[str, float]:
    """Connect with wrong credentials: the error's text and how long it took."""
    started = time.monotonic()
    with pytest.raises(BusUnavailableError) as caught:
        await Bus.connect(settings, namespace="refused")
    return str(caught.value), time.monotonic() - started


def assert_auth_refusal(text: str, took: float) -> None:
    assert "authorization failed" in text, text
    assert "refused the connection" in text, text
    assert "Is a server running" not in text  # it is: the hint would mislead
    assert took < 2.0, f"refusal took {took:.1f}s"


# -- authentication --------------------------------------------------------------------------


async def test_user_password(servers: list[EmbeddedServer], tmp_path: Path,
                             namespace: str) -> None:
    password = secrets.token_urlsafe(16)
    conf = tmp_path / "auth.conf"
    conf.write_text(f'authorization {{ user: swarm, password: "{password}" }}\n')
    server = start_server(servers, conf)
    good = NatsSettings(servers=[server.url], user="swarm", password=SecretStr(password))
    with anyio.fail_after(30):
        result = await run_one(good, namespace)
    assert result.status == "approved", result.reason

    for wrong in (
        good.model_copy(update={"password": SecretStr("not-" + password)}),
        good.model_copy(update={"user": "mallory"}),
        NatsSettings(servers=[server.url]),  # no credentials at all
    ):
        text, took = await refused(wrong)
        assert_auth_refusal(text, took)
        assert password not in text

    # The CLI says the same, as its exit code 2 and one line on stderr.
    def cli() -> tuple[int, str]:
        import io
        from contextlib import redirect_stderr

        err = io.StringIO()
        with redirect_stderr(err):
            code = cli_main(["status", "wf1", "--nats", server.url, "--namespace", namespace])
        return code, err.getvalue()

    code, err = await anyio.to_thread.run_sync(cli)
    assert code == 2 and "authorization failed" in err, err


async def test_nkey(servers: list[EmbeddedServer], tmp_path: Path, namespace: str) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "swarm.nk"
    seed_file.write_bytes(seed)
    seed_file.chmod(0o600)
    conf = tmp_path / "nkey.conf"
    conf.write_text(f"authorization {{ users = [ {{ nkey: {public} }} ] }}\n")
    server = start_server(servers, conf)
    good = NatsSettings(servers=[server.url], nkey_seed_file=seed_file)
    with anyio.fail_after(30):
        result = await run_one(good, namespace)
    assert result.status == "approved", result.reason

    other = tmp_path / "other.nk"
    other.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    text, took = await refused(NatsSettings(servers=[server.url], nkey_seed_file=other))
    assert_auth_refusal(text, took)
    text, took = await refused(NatsSettings(servers=[server.url], user="swarm",
                                            password=SecretStr("guess")))
    assert_auth_refusal(text, took)


async def test_credentials_in_the_url_are_not_repeated_in_errors() -> None:
    password = secrets.token_urlsafe(16)
    down = f"nats://swarm:{password}@127.0.0.1:{free_port()}"
    with pytest.raises(BusUnavailableError) as caught:
        await Bus.connect(NatsSettings(servers=[down], connect_timeout_s=1))
    assert "cannot reach NATS" in str(caught.value)
    assert password not in str(caught.value)
    assert "swarm:***@127.0.0.1" in str(caught.value)


# -- subject permissions (examples/nats/permissions.conf) -------------------------------------


@message_type("tests.AuditFindings")  # `audit` implies the README's type; send the header
class AuditFindings(Message):
    files: int
    todos: int


class Auditor(Agent):
    """A custom agent: reads every code submission (work for `review`), publishes its
    findings on `audit`."""

    name = "auditor"

    @handles("step.review")
    async def on_code(self, msg: Work, ctx: Context[Work]) -> None:
        code = msg.state.code
        files = code.files if code else []
        todos = sum(f.content.count("TODO") for f in files)
        await ctx.publish(AuditFindings(files=len(files), todos=todos), topic="audit")


async def test_permissions_example(servers: list[EmbeddedServer]) -> None:
    swarm_pw, auditor_pw = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    # nats-server parses a `$VAR`'s value like a config value: quoted, any text is a string.
    server = start_server(servers, EXAMPLE_CONF, SWARM_NATS_PASSWORD=f'"{swarm_pw}"',
                          AUDITOR_NATS_PASSWORD=f'"{auditor_pw}"')
    ns = "default"  # the namespace the example is written for
    swarm_user = NatsSettings(servers=[server.url], user="swarm", password=SecretStr(swarm_pw))
    auditor_user = NatsSettings(servers=[server.url], user="auditor",
                                password=SecretStr(auditor_pw), inbox_prefix="_INBOX_auditor")
    with anyio.fail_after(60):
        async with (
            Swarm(team(Script().models()), nats=swarm_user, namespace=ns, grace_s=3),
            Swarm([Auditor()], nats=auditor_user, namespace=ns, grace_s=3, dead_letters=False),
            await SwarmClient.connect(swarm_user, namespace=ns) as client,
        ):
            await client.submit(TaskRequest(goal=GOAL), workflow_id="wf1")
            result = await client.result("wf1")
            finding = await until(lambda: client.bus.last("wf1", "audit"))
            # The auditor announced itself (its key in the agents bucket).
            agents = await client.bus.key_value(AGENTS_BUCKET, ttl_s=20, storage=AGENTS_STORAGE)
            keys = await until(agents.keys, lambda ks: any(k.startswith("auditor.") for k in ks))

            denied = await auditor_attempts(server.url, auditor_pw)
            info = await client.bus.js.consumer_info("SWARM_DEFAULT", "auditor")
            filters = info.config.filter_subjects or [info.config.filter_subject]
            # Nothing the auditor tried reached the stream.
            for topic in ("task", "result", "step.implement", "deadletter", "step.review"):
                assert await client.bus.last("mallory", topic) is None, topic
            trail = await client.trail("wf1")

    assert result.status == "approved", result.reason
    assert json.loads(finding.data) == {"files": 2, "todos": 0}
    assert finding.headers["Swarm-Sender"] == "auditor"
    assert any(k.startswith("auditor.") for k in keys), keys
    assert sorted(s.subject.split(".", 3)[3] for s in trail) == [
        "audit", "result", "step.implement", "step.review", "task"]

    assert denied["published"] == {}, denied["published"]
    assert denied["received"] == [], denied["received"]
    for what in ("publish_task", "publish_result", "publish_step.implement", "js_task",
                 "js_result"):
        assert what in denied["violations"], (what, denied)
    # The server refuses a filter other than the one in the (permitted) API subject.
    assert {k: e and e["err_code"] for k, e in denied["api_errors"].items()} == {
        "smuggle_filter": 10131,  # "did not match filtered subject from create subject"
        "smuggle_filters": 10137,  # "multiple subject filters cannot use subject based API"
    }, denied["api_errors"]
    assert filters == ["swarm.default.*.step.review"]
    for what in ("sub_task", "sub_all", "sub_inbox", "consumer_task",
                 "consumer_other", "get_msg", "direct_get", "stream_update", "kv_cancel"):
        assert what in denied["violations"], (what, denied)



async def until(get: Any, ok: Any = None, *, every: float = 0.05) -> Any:
    while True:
        value = await get()
        if (ok(value) if ok else value is not None):
            return value
        await anyio.sleep(every)


async def auditor_attempts(url: str, password: str) -> dict[str, Any]:
    """Everything the auditor's credentials must not allow, tried on a raw connection.

    Returns which attempts the server reported as permission violations, what was
    published anyway (acked by the stream) and what was received."""
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    nc = await nats.connect(url, user="auditor", password=password,
                            inbox_prefix="_INBOX_auditor", error_cb=on_error,
                            allow_reconnect=False)
    js = nc.jetstream(timeout=1.0)
    violations: dict[str, str] = {}
    published: dict[str, int] = {}
    received: list[str] = []
    api_errors: dict[str, Any] = {}

    async def expect_violation(name: str, needle: str) -> None:
        with anyio.move_on_after(2):
            while not any(needle.lower() in e.lower() for e in errors):
                await anyio.sleep(0.02)
        hits = [e for e in errors if needle.lower() in e.lower()]
        if hits:
            violations[name] = hits[-1]

    async def on_msg(msg: Any) -> None:
        received.append(msg.subject)

    try:
        body = json.dumps({"goal": "exfiltrate"}).encode()
        # Core publishes on work topics.
        for topic in ("task", "result", "step.implement"):
            await nc.publish(f"swarm.default.mallory.{topic}", body)
            await nc.flush()
            await expect_violation(f"publish_{topic}", f"swarm.default.mallory.{topic}")
        # The same through JetStream: no ack, nothing stored.
        for topic in ("task", "result"):
            subj = f"swarm.default.mallory.{topic}"
            try:
                ack = await js.publish(subj, body)
                published[subj] = ack.seq
            except nats.errors.Error:
                pass
            await expect_violation(f"js_{topic}", subj)
        # Reading other topics: a subscription, every subject, other clients' replies.
        for name, subj in (("sub_task", "swarm.default.*.task"), ("sub_all", ">"),
                           ("sub_inbox", "_INBOX.>")):
            await nc.subscribe(subj, cb=on_msg)
            await nc.flush()
            await expect_violation(name, f'subscription to "{subj}"')
        # ...a consumer on another topic (under its own name, or another name)...
        for name, api in (
            ("consumer_task", "CONSUMER.CREATE.SWARM_DEFAULT.auditor.swarm.default.*.task"),
            ("consumer_other",
             "CONSUMER.CREATE.SWARM_DEFAULT.spy.swarm.default.*.step.review"),
            ("get_msg", "STREAM.MSG.GET.SWARM_DEFAULT"),
            ("direct_get", "DIRECT.GET.SWARM_DEFAULT"),
            ("stream_update", "STREAM.UPDATE.SWARM_DEFAULT"),
        ):
            with contextlib.suppress(nats.errors.Error):
                await nc.request(f"$JS.API.{api}", b"{}", timeout=0.5)
            await expect_violation(name, f"$JS.API.{api}")
        # ...nor its own consumer re-created with other filters through the allowed subject.
        allowed = "$JS.API.CONSUMER.CREATE.SWARM_DEFAULT.auditor.swarm.default.*.step.review"
        for name, filters in (
            ("smuggle_filter", {"filter_subject": "swarm.default.*.task"}),
            ("smuggle_filters", {"filter_subjects": ["swarm.default.*.step.review",
                                                     "swarm.default.*.task"]}),
        ):
            req = {"stream_name": "SWARM_DEFAULT", "config": {
                "name": "auditor", "durable_name": "auditor", "ack_policy": "explicit",
                **filters}}
            reply = await nc.request(allowed, json.dumps(req).encode(), timeout=2)
            api_errors[name] = json.loads(reply.data).get("error")
        # ...or another bucket (the cancel flags).
        with contextlib.suppress(nats.errors.Error):
            await js.publish("$KV.swarm_default_cancel.wf1", b"1")
        await expect_violation("kv_cancel", "$KV.swarm_default_cancel.wf1")
        await anyio.sleep(0.3)  # anything delivered despite a violation arrives by now
    finally:
        await nc.close()
    return {"violations": violations, "published": published, "received": received,
            "api_errors": api_errors, "errors": errors}


# -- secrets and the sandbox, through a real daemon -------------------------------------------

# The submitted test prints its environment (and its parent's, which is the daemon, if it
# can read /proc), tries to write outside its directory in four ways, then fails on purpose
# so pytest shows its output, which reaches the trail in the reviewer's revise.code.
HOSTILE_TEST = '''
import ctypes, os, subprocess

OUTSIDE = {outside!r}
READ_PARENT = {read_parent!r}


def attempt(name, fn):
    try:
        fn()
        print("ATTEMPT", name, "wrote")
    except BaseException as exc:  # refused by the audit hook or by Landlock
        print("ATTEMPT", name, "refused", type(exc).__name__)


def by_open():
    with open(os.path.join(OUTSIDE, "open.txt"), "w") as fh:
        fh.write("escaped")


def by_os_open():
    os.close(os.open(os.path.join(OUTSIDE, "os_open.txt"), os.O_WRONLY | os.O_CREAT, 0o644))


def by_shell():
    subprocess.run(["/bin/sh", "-c", "echo escaped > " + OUTSIDE + "/shell.txt"], check=True)


def by_libc():
    libc = ctypes.CDLL(None, use_errno=True)
    path = os.path.join(OUTSIDE, "libc.txt").encode()
    fd = libc.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "libc open")
    libc.close(fd)


def test_dump_and_escape():
    print("ENV-BEGIN")
    for key, value in sorted(os.environ.items()):
        print(key + "=" + value)
    print("ENV-END")
    if READ_PARENT:
        for what in ("environ", "cmdline"):
            path = "/proc/%d/%s" % (os.getppid(), what)
            try:
                with open(path, "rb") as fh:
                    seen = fh.read().replace(b"\\0", b" ")
                print("PARENT", what, seen.decode("utf-8", "replace"))
            except OSError as exc:
                print("PARENT", what, "refused", type(exc).__name__)
    for name, fn in (("open", by_open), ("os.open", by_os_open), ("shell", by_shell),
                     ("libc", by_libc)):
        attempt(name, fn)
    assert False, "shown on purpose"
'''


async def test_no_secrets_in_logs_trails_or_sandbox(
    servers: list[EmbeddedServer], tmp_path: Path, namespace: str
) -> None:
    password = "nats-" + secrets.token_hex(12)
    conf = tmp_path / "auth.conf"
    conf.write_text(f'authorization {{ user: swarm, password: "{password}" }}\n')
    server = start_server(servers, conf)
    keys = {name: f"{name.lower()}-{secrets.token_hex(12)}" for name in (
        "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")}
    secret_values = [password, *keys.values()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBUS_")}
    env.update(keys, SWARMBUS_NATS__USER="swarm", SWARMBUS_NATS__PASSWORD=password,
               SWARMBUS_BLOCK_REAL_MODELS="1")
    outside = tmp_path / "outside"
    outside.mkdir()
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    log = workdir / "up.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [*swarmbus_cmd(), "up", "--offline", "--nats", server.url, "--namespace", namespace,
             "--log-format", "json"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env,
        )
    read_parent = landlock_abi() > 0  # without Landlock /proc/<parent> is readable
    files = [
        SourceFile(path="solution.py", content="def solve():\n    return 'ok'\n"),
        SourceFile(path="test_hostile.py",
                   content=HOSTILE_TEST.format(outside=str(outside), read_parent=read_parent)),
    ]
    state = WorkState(task=TaskRequest(goal="Write solve() that returns 'ok'"), round=1,
                      artifacts={
                          "design": Design(summary="solve() returns 'ok'",
                                           files=["solution.py"]).model_dump(mode="json"),
                          "code": Code(files=files).model_dump(mode="json")})
    settings = NatsSettings(servers=[server.url], user="swarm", password=SecretStr(password))
    try:
        with anyio.fail_after(90):
            async with await SwarmClient.connect(settings, namespace=namespace) as client:
                await client.submit(TaskRequest(goal=GOAL), workflow_id="plain")
                plain = await client.result("plain")  # the daemon runs: its workflow stored
                # Straight to the reviewer, as if a coder had written it.
                await client.bus.publish("hostile", "step.review",
                                         Work(state=state, source="implement", output="code"),
                                         Meta("hostile-code", sender="coder"))
                hostile = await client.result("hostile")
                revise = await client.bus.last("hostile", "step.implement")
                stream = await everything(client.bus)
    finally:
        daemon.terminate()
        await anyio.to_thread.run_sync(daemon.wait, 30)
    logs = log.read_text()

    assert plain.status == "approved", (plain.reason, logs[-3000:])
    assert hostile.status == "approved", (hostile.reason, logs[-3000:])  # after a fix
    assert revise is not None
    report = revise.decode().message.state.test_report  # type: ignore[attr-defined]
    output = report.output
    # The dump really ran and reached the trail...
    assert "\nENV-BEGIN\n" in output and "\nENV-END\n" in output, output
    dump = output.split("\nENV-BEGIN\n", 1)[1].split("\nENV-END\n", 1)[0]
    assert "HOME=" in dump and "PATH=" in dump, dump
    # ...with no secret and no secret's name in it.
    for name in (*keys, "SWARMBUS_NATS__PASSWORD", "SWARMBUS_NATS__USER"):
        assert name not in dump, name
    if read_parent:
        assert "PARENT environ refused" in output and "PARENT cmdline refused" in output, output
    # No write got out.
    for name in ("open", "os.open", "shell", "libc"):
        assert f"ATTEMPT {name} refused" in output, (name, output)
    assert list(outside.iterdir()) == []

    # The daemon logged JSON lines, and neither they, the trail nor the dump hold a secret.
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(rec.get("event") == "swarm running" for rec in lines), logs[-2000:]
    assert any(rec.get("event") == "tests ran" for rec in lines)
    for value in secret_values:
        assert value not in logs
        assert value.encode() not in stream
        assert value not in output
    assert daemon.returncode == 0, logs[-3000:]


async def everything(bus: Bus) -> bytes:
    """Every stored message of the namespace (subjects, headers, bodies) as one blob."""
    blob = bytearray()
    seq = 0
    while True:
        try:
            raw = await bus.js.get_msg(bus.stream_name, seq=seq + 1,
                                       subject=namespace_filter(bus.namespace), next=True)
        except nats.js.errors.NotFoundError:
            return bytes(blob)
        assert raw.seq is not None and raw.subject is not None
        seq = raw.seq
        blob += raw.subject.encode() + json.dumps(dict(raw.headers or {})).encode()
        blob += raw.data or b""
