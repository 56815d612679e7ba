"""Fixtures for the model tests: fake vendor servers, fake keys, a fresh price table."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _model_fakes import SECRET, FakeServer

from swarmbus.agents.models import _prices as prices_module
from swarmbus.agents.models import block_real_models

KEY_ENVS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")

@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"debug": True})  # asyncio debug mode: hostile tests


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake2() -> Iterator[FakeServer]:
    server = FakeServer().start()
    try:
        yield server
    finally:
        server.stop()



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


@pytest.fixture(autouse=True)
def _real_calls_allowed_for_loopback() -> Iterator[None]:
    """These tests call providers only on loopback fakes; the switch has its own tests."""
    with block_real_models(False):
        yield


@pytest.fixture
def fresh_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    """A freshly loaded price table for this test only (set_price does not leak)."""
    monkeypatch.setattr(prices_module, "_default", None)
