from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from _sandbox_helpers import REQUIRE_BUBBLEWRAP, bubblewrap_missing
from _vendor_fakes import SECRET, FakeServer

pytest_plugins = ["swarmbus.agents.pytest_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bubblewrap(tree_limits=False): runs model-written code in the bubblewrap "
        f"sandbox; skipped where it cannot (fails instead with {REQUIRE_BUBBLEWRAP}=1, as in CI)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``bubblewrap`` skips where bubblewrap cannot run, saying what to
    install; with REQUIRE_BUBBLEWRAP=1 (``.ci/run``) it fails instead."""
    marker = item.get_closest_marker("bubblewrap")
    if marker is None:
        return
    why = bubblewrap_missing(tree_limits=bool(marker.kwargs.get("tree_limits", False)))
    if not why:
        return
    if os.environ.get(REQUIRE_BUBBLEWRAP) == "1":
        pytest.fail(f"{REQUIRE_BUBBLEWRAP}=1 and this test needs bubblewrap: {why}",
                    pytrace=False)
    pytest.skip(f"needs the bubblewrap sandbox: {why}")

KEY_ENVS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"debug": True})  # asyncio debug mode: hostile tests


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still alive at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """A loopback server speaking the vendors' wire formats (see ``_vendor_fakes``)."""
    with FakeServer() as server:
        yield server


@pytest.fixture
def fake2() -> Iterator[FakeServer]:
    """A second one, for fallback chains."""
    with FakeServer() as server:
        yield server


@pytest.fixture
def fake_keys(monkeypatch: pytest.MonkeyPatch) -> str:
    """Fake keys in every provider's variable; the fakes accept anything."""
    for name in KEY_ENVS:
        monkeypatch.setenv(name, SECRET)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return SECRET


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEY_ENVS:
        monkeypatch.delenv(name, raising=False)


# A stray real model call fails the test (tests/models re-allows calls to its loopback fakes).
os.environ.setdefault("SWARMBUS_BLOCK_REAL_MODELS", "1")
