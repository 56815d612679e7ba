"""swarm.yaml loading, env overrides, and the CLI commands that need no workflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from swarmbus.agents import Swarm
from swarmbus.agents.app import build_agents, load_config
from swarmbus.protocols import ConfigError, registry

SWARMBUS = [sys.executable, "-m", "swarmbus.agents.app"]


def test_env_overrides_nested_fields(tmp_path: Path) -> None:
    path = tmp_path / "swarm.yaml"
    path.write_text("namespace: a\nroles:\n  coder: {model: 'openai:gpt-4o', concurrency: 2}\n")
    cfg = load_config(path, environ={
        "SWARMBUS_NAMESPACE": "prod",
        "SWARMBUS_NATS__SERVERS": "nats://a:4222,nats://b:4222",
        "SWARMBUS_NATS__PASSWORD": "12345",
        "SWARMBUS_ROLES__CODER__CONCURRENCY": "7",
        "UNRELATED": "x",
    })
    assert cfg.namespace == "prod"
    assert cfg.nats.servers == ["nats://a:4222", "nats://b:4222"]
    assert cfg.nats.password is not None and cfg.nats.password.get_secret_value() == "12345"
    assert "12345" not in repr(cfg) and "12345" not in str(cfg.model_dump())
    assert cfg.roles["coder"].concurrency == 7
    assert cfg.roles["coder"].model == "openai:gpt-4o"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("namespcae: x\n", "namespcae"),
        ("roles: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("roles:\n  coder: {concurrency: 0}\n", "roles.coder.concurrency"),
    ],
)
def test_bad_config_says_what_to_change(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "swarm.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path, environ={})


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/swarm.yaml", environ={})


def test_no_models_and_not_offline_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="--offline"):
        build_agents(load_config(None, environ={}))


def test_unknown_role_and_bad_agent_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"roles \['tester'\] in swarm.yaml are not roles of "
                       r"workflow 'code-review' \(architect, coder, reviewer\)"):
        build_agents(load_config(None, environ={}, roles={"tester": {}}))
    with pytest.raises(ConfigError, match="cannot import agent"):
        build_agents(load_config(None, environ={}, offline=True, agents=["nope.mod:Agent"]))


def test_unknown_provider_fails_at_start() -> None:
    cfg = load_config(None, environ={}, roles={"coder": {"model": "openia:gpt-4o"}})
    with pytest.raises(ConfigError, match="openia"):
        build_agents(cfg)


def test_schema_command_writes_every_type(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    proc = subprocess.run([*SWARMBUS, "schema", "-o", str(out)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    for cls in registry:
        if cls.swarm_type.startswith("swarmbus."):
            assert cls.swarm_type.replace("/", ".v") + ".json" in names
    task = json.loads((out / "swarmbus.TaskRequest.v1.json").read_text())
    assert task["required"] == ["goal"]
    assert task["x-swarm-default-topics"] == ["task"]


def test_client_command_fails_fast_without_nats() -> None:
    proc = subprocess.run(
        [*SWARMBUS, "status", "wf", "--nats", "nats://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"SWARMBUS_NATS__CONNECT_TIMEOUT_S": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "cannot reach NATS" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.anyio
async def test_agents_command_lists_live_swarm(nats_url: str, namespace: str) -> None:
    cfg = load_config(None, environ={}, offline=True, namespace=namespace)
    async with Swarm(build_agents(cfg), nats=nats_url, namespace=namespace, grace_s=1):
        with anyio.fail_after(30):
            while True:
                proc = await anyio.run_process(
                    [*SWARMBUS, "agents", "--json", "--nats", nats_url, "--namespace", namespace],
                    check=False,
                )
                listed = json.loads(proc.stdout) if proc.returncode == 0 else []
                if len(listed) == 4:
                    break
                await anyio.sleep(0.2)
    assert {a["agent"] for a in listed} == {"architect", "coder", "reviewer", "supervisor"}
    coder = next(a for a in listed if a["agent"] == "coder")
    assert coder["topics"] == ["step.implement"]
    assert coder["settings"] == {"ack_wait_s": 60.0, "max_deliver": 5, "max_ack_pending": 1000,
                                 "concurrency": 8}
    assert coder["stalled"] == ""
    assert coder["model"] == "scripted:coder"
    assert coder["namespace"] == namespace


# -- every mistake: one line, exit 2, no traceback -------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBUS_")}
    base["SWARMBUS_NATS__CONNECT_TIMEOUT_S"] = "1"
    proc = subprocess.run([*SWARMBUS, *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**base, **(env or {})})
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["submit", ""], {}, "goal: String should have at least 1 character"),
    (["submit", "g", "--budget", "-1"], {}, "budget_usd: Input should be greater than or equal"),
    (["submit", "g", "--budget", "nan"], {}, "budget_usd: Input should be a finite number"),
    (["submit", "g", "--timeout", "0"], {}, "timeout_s: Input should be greater than 0"),
    (["submit", "g", "--max-code-revisions", "-2"], {}, "max_code_revisions"),
    (["submit", "g", "--id", ""], {}, "invalid workflow id ''"),
    (["submit", "g", "--input", "novalue"], {}, "--input 'novalue': give NAME=VALUE"),
    (["submit", "g", "--nats", "http://127.0.0.1:4222"], {}, "use nats://"),
    (["status", "wf", "--nats", "127.0.0.1:4222"], {}, "use nats://"),
    (["up", "--offline", "--nats", "nats://127.0.0.1:9"], {}, "cannot reach NATS"),
    (["up", "--offline"], {"SWARMBUS_NAMESPACE": "Bad Name!"}, "namespace"),
    (["up", "--offline"], {"SWARMBUS_ROLES__CODER__CONCURRENCY": "lots"},
     "roles.coder.concurrency (from the environment variable SWARMBUS_ROLES__CODER__CONCURRENCY)"),
    (["up", "--workflow", "/no/such.yaml"], {}, "invalid workflow /no/such.yaml"),
    (["submit", "   "], {}, "the goal is only whitespace"),
    (["submit", "g"], {"SWARMBUS_NOSUCHFIELD": "1"}, "SWARMBUS_NOSUCHFIELD: no such swarm.yaml"),
    (["up", "-c", str(Path(__file__).parent / "fixtures" / "broken.yaml")], {},
     "is not valid YAML: expected ',' or ']', but got '<stream end>'"),
])
def test_every_mistake_is_one_line(args: list[str], env: dict[str, str], expected: str) -> None:
    code, err = _cli(*args, env=env)
    assert code == 2, err
    last = err.strip().splitlines()[-1]  # after the daemon's own log lines, if it got that far
    assert last.startswith("error: ") and expected in last, err
    assert [ln for ln in err.splitlines() if ln.startswith("error")] == [last]
    assert "Traceback" not in err


def test_secrets_from_the_environment_are_raw_strings(tmp_path: Path) -> None:
    for password in ("[pr0d]", "s3cr3t: v2", "{a: b}", "12345", "- x"):
        cfg = load_config(None, environ={"SWARMBUS_NATS__PASSWORD": password,
                                         "SWARMBUS_NATS__TOKEN": password})
        assert cfg.nats.secret("password") == password
        assert cfg.nats.secret("token") == password
    secret = tmp_path / "pw"
    secret.write_text("[from-a-file]\n")
    cfg = load_config(None, environ={"SWARMBUS_NATS__PASSWORD_FILE": str(secret)})
    assert cfg.nats.password is None and cfg.nats.secret("password") == "[from-a-file]"
    # lists and mappings are still YAML where the setting takes one
    cfg = load_config(None, environ={"SWARMBUS_ROLES__CODER__MODEL": "[openai:gpt-4o, x:y]"})
    assert cfg.roles["coder"].model == ["openai:gpt-4o", "x:y"]


@pytest.mark.bubblewrap  # real models: the reviewer needs bubblewrap
def test_up_on_a_port_names_unpriced_models_and_stops_on_sigterm(tmp_path: Path) -> None:
    from swarmbus.bus import free_port

    port = free_port()
    # The reviewer's model has a price in its spec: it is priced, and not warned about.
    (tmp_path / "swarm.yaml").write_text(
        "workflow: wf.yaml\nroles:\n" + "".join(
            f"  {role}: {{model: {{name: 'openai-compatible:my-model', "
            f"base_url: 'http://127.0.0.1:9/v1'{extra}}}}}\n"
            for role, extra in (("architect", ""), ("coder", ""),
                                ("reviewer", ", price: {input: 1, output: 2}"))))
    # Steps with models of their own: `up` logs what `workflow check` warns, once each.
    (tmp_path / "wf.yaml").write_text(
        "workflow:\n- role: architect\n- role: coder\n  input: design\n"
        "  model: ollama:llama3.1\n- role: reviewer\n  input: design + code\n"
        "  model: openai:gpt-4oo\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBUS_")}
    env["OPENAI_API_KEY"] = "sk-not-used"  # built, never called
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*SWARMBUS, "up", "-c", "swarm.yaml", "--port", str(port), "--log-format", "json"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while '"swarm running"' not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        unpriced = [x for x in lines if x["event"].startswith("model has no price")]
        assert sorted(x["role"] for x in unpriced) == ["architect", "coder"]
        assert {x["model"] for x in unpriced} == {"openai-compatible:my-model"}
        checked = [x["warning"] for x in lines if x["event"] == "workflow check"]
        assert [w.split(": ", 1)[0] for w in checked] == ["steps[1].model", "steps[2].model"]
        assert "'ollama:llama3.1' has no price" in checked[0]
        assert "(did you mean 'gpt-4o'?)" in checked[1]
        assert f"embedded nats-server on nats://127.0.0.1:{port}" in log.read_text()
        assert (tmp_path / ".swarmbus" / "nats").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-2000:]


def test_the_result_never_shows_an_unknown_cost_as_zero() -> None:
    from swarmbus.agents.app import progress_line, render_result, render_status
    from swarmbus.bus import WorkflowStatus
    from swarmbus.protocols import TaskResult, Usage

    spend = {
        "architect": Usage(calls=1, cost_usd=0.0, unpriced_calls=1),
        "coder": Usage(calls=2, cost_usd=0.5, unpriced_calls=1),
        "reviewer": Usage(calls=1, cost_usd=0.0015, estimated_calls=1),
    }
    result = TaskResult(status="approved", spend=spend, total=Usage.sum(spend.values()))
    lines = {line.split()[0]: line for line in render_result("w", result).splitlines()[2:]}
    assert "cost unknown (1 unpriced" in lines["architect"] and "$0.0000" not in lines["architect"]
    assert ">=$0.5000" in lines["coder"]
    assert "~$0.0015" in lines["reviewer"]
    # In JSON an unknown cost is null, and the priced part is a field of its own.
    data = json.loads(result.model_dump_json())
    assert (data["total"]["cost_usd"], data["total"]["priced_cost_usd"]) == (None, 0.5015)
    assert data["spend"]["reviewer"]["cost_usd"] == 0.0015
    assert data["spend"]["architect"]["cost_usd"] is None
    # Spend written before ``priced_cost_usd`` existed: its cost_usd was the priced part.
    old = Usage.model_validate_json('{"calls": 2, "unpriced_calls": 1, "cost_usd": 0.25}')
    assert (old.cost_usd, old.priced_cost_usd) == (None, 0.25)
    assert Usage.model_validate_json('{"calls": 1, "cost_usd": 0.25}').cost_usd == 0.25
    # A running workflow's status and progress line say so too.
    status = WorkflowStatus("w", known=True, round=1, spent=result.total)
    assert render_status(status).endswith("spent >=~$0.5015")
    assert progress_line(status).endswith("spent >=~$0.5015")


def as_in_a_terminal() -> None:
    """In the child before exec: SIGINT handled by default, as in a terminal (a test
    run started in the background inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("moment", ["server-starting", "running"])
def test_ctrl_c_in_a_terminal_during_up_is_quiet_and_leaves_no_server(
    tmp_path: Path, moment: str
) -> None:
    """SIGINT to the whole foreground process group, as a terminal sends it, as soon as
    the embedded server's process exists (it is still starting), and once the daemon
    runs: exit without a traceback, and the embedded server (in a process group of its
    own, so the SIGINT does not reach it) is stopped too."""
    import socket

    from swarmbus.bus import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBUS_")}
    proc = subprocess.Popen([sys.executable, "-m", "swarmbus", "up", "--offline", "--port",
                             str(port)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, preexec_fn=as_in_a_terminal)
    try:
        deadline = time.monotonic() + 60
        while not _children(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        if moment == "running":
            time.sleep(3.0)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()  # reaped, pipes closed
    assert proc.returncode in (0, 130), out
    assert "Traceback" not in out, out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize("command", ["nats", "up"])
def test_a_command_ends_when_its_embedded_server_dies(tmp_path: Path, command: str) -> None:
    """``swarmbus nats`` and ``swarmbus up`` (embedded server) whose nats-server is killed:
    the command ends with one error line and exit 2 (a supervisor restarts it), instead
    of running on without a server."""
    from swarmbus.bus import free_port

    port = free_port()
    args = ["nats", "--data-dir", str(tmp_path / "nats")] if command == "nats" else \
        ["up", "--offline"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBUS_")}
    proc = subprocess.Popen([sys.executable, "-m", "swarmbus", *args, "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    ready = "Ctrl-C stops it" if command == "nats" else '"swarmbus up"'
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        while not seen or ready not in seen[-1]:  # the command runs, its server ready
            line = proc.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
        [guard] = _children(proc.pid)  # it stops the server if the command is killed
        [server] = _children(guard)
        os.kill(server, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    out = "".join(seen) + out
    assert proc.returncode == 2, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: the embedded nats-server exited with -9"), out
    assert "Traceback" not in out, out



def test_nats_on_a_taken_port_says_so_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        # An earlier run's log in the data directory once passed for a ready server.
        (tmp_path / "nats").mkdir()
        (tmp_path / "nats" / "nats-server.log").write_text("[INF] Server is ready\n")
        ran = subprocess.run([*SWARMBUS, "nats", "--port", str(port), "--data-dir",
                              str(tmp_path / "nats")], capture_output=True, text=True,
                             timeout=60)
    assert ran.returncode == 2, ran.stderr
    assert ran.stderr.strip() == (f"error: 127.0.0.1:{port} is taken (another nats-server?): "
                                  "stop it, or pick another port")
