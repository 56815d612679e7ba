"""Start-up: how long ``swarmbus up`` takes to be ready, and what it holds at idle.

Runs ``swarmbus up`` (with the embedded nats-server, on a free loopback port) for
three configurations: offline (scripted models), one vendor (OpenAI
for every role) and three vendors (Gemini, OpenAI, Anthropic), with fake keys:
nothing calls a provider at start. For each run it measures

- ready: from spawning the process to its ``swarm running`` log line (seconds;
  the ``swarmbus up`` line that follows names the loop);
- clients: from spawning to ``models prepared`` (SDKs imported, clients created,
  in the background after ready): roughly what ready took when SDKs loaded first;
- RSS: the daemon's resident memory (MB, /proc) once its model clients exist
  (after the ``models prepared`` line) and it has idled ``--idle`` seconds;
  the nats-server child is reported apart.

and prints the median of ``--runs`` runs per configuration, plus the loop in use.

    python benchmarks/startup.py [--runs 5] [--idle 1.0] [--out results-startup.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS: dict[str, str | None] = {
    "offline": None,
    "one vendor": "roles:\n"
    "  architect: {model: 'openai:gpt-4o'}\n"
    "  coder: {model: 'openai:gpt-4o'}\n"
    "  reviewer: {model: 'openai:gpt-4o'}\n",
    "three vendors": "roles:\n"
    "  architect: {model: 'google:gemini-2.5-pro'}\n"
    "  coder: {model: 'openai:gpt-4o'}\n"
    "  reviewer: {model: 'anthropic:claude-haiku-4-5'}\n",
}
FAKE_KEYS = {
    "OPENAI_API_KEY": "sk-startup-bench-not-a-key",
    "ANTHROPIC_API_KEY": "sk-ant-startup-bench-not-a-key",
    "GEMINI_API_KEY": "startup-bench-not-a-key",
    "SWARMBUS_BLOCK_REAL_MODELS": "1",
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the parent's pid, after the state
            found.append(int(stat.parent.name))
    return found


def one_run(config: str | None, idle_s: float, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="swarmbus-startup-") as tmp:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        args = [sys.executable, "-m", "swarmbus", "up", "--log-format", "json",
                "--data-dir", tmp, "--namespace", "startup", "--port", str(port)]
        if config is None:
            args.append("--offline")
        else:
            (Path(tmp) / "swarm.yaml").write_text(config)
            args += ["-c", str(Path(tmp) / "swarm.yaml")]
        env = {**os.environ, **FAKE_KEYS}
        started = time.perf_counter()
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                env=env, text=True)
        assert proc.stderr is not None
        ready_s: float | None = None
        prepared_s = 0.0
        loop = "?"
        try:
            deadline = started + timeout_s
            for line in proc.stderr:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "swarmbus up":
                    loop = event.get("loop", "?")
                if event.get("event") == "swarm running" and ready_s is None:
                    ready_s = time.perf_counter() - started
                if event.get("event") == "models prepared":  # offline: nothing to load
                    prepared_s = time.perf_counter() - started
                    break
                if time.perf_counter() > deadline:
                    raise TimeoutError("swarmbus up did not get ready in time")
            if ready_s is None:
                raise RuntimeError(f"swarmbus up exited with {proc.wait()} before ready")
            time.sleep(idle_s)
            daemon = rss_mb(proc.pid)
            server = sum(rss_mb(c) for c in children(proc.pid))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    return {"ready_s": ready_s, "prepared_s": prepared_s, "rss_mb": daemon,
            "server_rss_mb": server, "loop": loop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle", type=float, default=1.0, help="seconds idle before reading RSS")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--only", choices=sorted(CONFIGS), action="append")
    a = ap.parse_args()
    lines = [
        f"swarmbus up, embedded nats-server, median of {a.runs} runs "
        f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)",
        f"{'config':<15} {'ready s':>8} {'(min-max)':>13} {'clients s':>10} {'RSS MB':>7} "
        f"{'server MB':>10}  loop",
    ]
    for name, config in CONFIGS.items():
        if a.only and name not in a.only:
            continue
        runs = [one_run(config, a.idle, a.timeout) for _ in range(a.runs)]
        ready = [r["ready_s"] for r in runs]
        clients = f"{statistics.median(r['prepared_s'] for r in runs):.2f}"
        lines.append(
            f"{name:<15} {statistics.median(ready):>8.2f} "
            f"{f'({min(ready):.2f}-{max(ready):.2f})':>13} "
            f"{clients:>10} "
            f"{statistics.median(r['rss_mb'] for r in runs):>7.1f} "
            f"{statistics.median(r['server_rss_mb'] for r in runs):>10.1f}  {runs[0]['loop']}"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
