"""swarmbus: teams of LLM agents as long-lived services over NATS JetStream.

The packages: ``swarmbus.protocols`` (the wire contract), ``swarmbus.bus`` (NATS,
the client that kicks work off), ``swarmbus.agents`` (the runtime, roles, models,
and ``swarmbus.agents.app``, the ``swarmbus`` command). Importing ``swarmbus``
imports none of them; ``swarmbus.__version__`` is the installed distribution's.
"""

from __future__ import annotations

__all__ = ("__version__",)


def __getattr__(name: str) -> str:
    # Looked up on first use: importing swarmbus.bus must stay cheap.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("swarmbus")
        except PackageNotFoundError:  # a source tree that was never installed
            found = "0+unknown"
        globals()["__version__"] = found
        return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
