"""Fixtures for the model tests (the vendor fakes and fake keys are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from swarmbus.agents.models import PriceTable, block_real_models, using_prices


@pytest.fixture(autouse=True)
def _real_calls_allowed_for_loopback() -> Iterator[None]:
    """These tests call providers only on loopback fakes; the switch has its own tests."""
    with block_real_models(False):
        yield


@pytest.fixture
def fresh_prices() -> Iterator[PriceTable]:
    """A freshly loaded price table for this test only (set_price does not leak)."""
    with using_prices(PriceTable.shipped()) as table:
        yield table
