from __future__ import annotations

import os

import pytest


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"debug": True})  # asyncio debug mode: hostile tests


# A stray real model call fails the test (tests/models re-allows calls to its loopback fakes).
os.environ.setdefault("SWARMBUS_BLOCK_REAL_MODELS", "1")
