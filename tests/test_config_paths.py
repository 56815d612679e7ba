"""``swarm.yaml`` read from another directory: its relative paths mean "next to the file",
and client commands given ``-c`` go to the embedded server its ``port:`` names."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from swarmbus.agents.app import load_config
from swarmbus.bus import SwarmClient, WorkflowIdTakenError, free_port
from swarmbus.protocols import TaskRequest

SWARMBUS = [sys.executable, "-m", "swarmbus.agents.app"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "workflows"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBUS_")}


def test_relative_paths_resolve_against_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "swarm.yaml"
    conf.parent.mkdir()
    conf.write_text(
        "workflow: flows/team.yaml\n"
        "data_dir: state\n"
        "nats: {password_file: secrets/nats, tls_ca_file: /abs/ca.pem}\n"
        "roles:\n"
        "  architect: {model: {name: 'openai:gpt-4o', api_key_file: keys/openai}}\n"
        "  coder:\n"
        "    model: {fallback: ['openai:gpt-4o', {name: 'anthropic:claude-haiku-4-5',\n"
        "                                          api_key_file: ../keys/anthropic}]}\n"
        "sandbox: {bwrap_path: bin/bwrap}\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    etc = conf.parent
    cfg = load_config(conf, environ={})
    assert cfg.workflow == str(etc / "flows" / "team.yaml")
    assert cfg.data_dir == etc / "state"
    assert cfg.nats.password_file == etc / "secrets" / "nats"
    assert cfg.nats.tls_ca_file == Path("/abs/ca.pem"), "absolute paths stay as they are"
    architect = cfg.roles["architect"].model
    assert architect is not None and getattr(architect, "api_key_file", None) == (
        etc / "keys" / "openai")
    assert str(etc / ".." / "keys" / "anthropic") in cfg.roles["coder"].model_dump_json()
    assert cfg.sandbox.bwrap_path == str(etc / "bin" / "bwrap")
    # A file named by a relative path: its paths are joined to that (relative) directory.
    assert load_config(Path("..") / "etc" / "swarm.yaml", environ={}).data_dir == (
        Path("..") / "etc" / "state")
    # Not from the file: the command line and the environment are relative to the cwd.
    over = load_config(conf, environ={"SWARMBUS_SANDBOX__BWRAP_PATH": "env/bwrap"},
                       data_dir="here", workflow="builtin:code-review")
    assert (over.data_dir, over.workflow, over.sandbox.bwrap_path) == (
        Path("here"), "builtin:code-review", "env/bwrap")


def test_client_commands_given_a_config_use_its_port(tmp_path: Path) -> None:
    """``swarmbus up -c`` and every client command with the same ``-c`` meet on the file's
    ``port:``, run from another directory; its workflow file and data directory are
    found next to it."""
    port = free_port()
    conf = tmp_path / "deploy" / "swarm.yaml"
    (conf.parent / "flows").mkdir(parents=True)
    shutil.copy(EXAMPLES / "seed.yaml", conf.parent / "flows" / "seed.yaml")
    conf.write_text(f"namespace: paths\nport: {port}\ndata_dir: state\n"
                    "workflow: flows/seed.yaml\noffline: true\n")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    ran: dict[str, subprocess.CompletedProcess[str]] = {}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        ran[argv[0]] = subprocess.run([*SWARMBUS, *argv, "-c", "../deploy/swarm.yaml"],
                                      cwd=cwd, env=ENV, capture_output=True, text=True,
                                      timeout=120, check=False)
        return ran[argv[0]]

    log = tmp_path / "up.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen([*SWARMBUS, "up", "-c", "../deploy/swarm.yaml"], cwd=cwd,
                                  env=ENV, stdout=out, stderr=subprocess.STDOUT)
    try:
        while "swarm running" not in log.read_text():
            assert daemon.poll() is None, log.read_text()
            time.sleep(0.1)
        assert (conf.parent / "state" / "nats" / "jetstream").is_dir()
        assert not (cwd / "state").exists() and not (cwd / ".swarmbus").exists()
        wf = cli("submit", "Write the payment gateway", "--no-wait").stdout.strip()
        assert ran["submit"].returncode == 0, ran["submit"].stderr
        assert cli("status", wf, "--json").returncode in (0, 1), ran["status"].stderr
        assert json.loads(ran["status"].stdout)["known"] is True
        assert cli("trail", wf).returncode == 0, ran["trail"].stderr
        assert cli("agents", "--json").returncode == 0, ran["agents"].stderr
        assert {a["agent"] for a in json.loads(ran["agents"].stdout)} >= {"architect", "coder"}
        assert cli("cancel", wf).returncode == 0, ran["cancel"].stderr

        async def same_server() -> None:  # what they did is on the file's port
            async with await SwarmClient.connect(f"nats://127.0.0.1:{port}",
                                                 namespace="paths") as client:
                assert (await client.bus.last(wf, "task")) is not None
                with pytest.raises(WorkflowIdTakenError):
                    await client.submit(TaskRequest(goal="another"), workflow_id=wf)

        anyio.run(same_server)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()[-2000:]
