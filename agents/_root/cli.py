"""The ``swarmbus`` command's entry point (the console script and ``python -m swarmbus``).

It imports the application only when called, inside the handler of Ctrl-C, so an
interrupt while the command is still loading ends quietly (exit 130) instead of
with an import traceback.
"""

from __future__ import annotations

__all__ = ["main"]


def main() -> int:
    """Run the ``swarmbus`` command with ``sys.argv``; returns its exit code."""
    try:
        from swarmbus.agents.app import main as run
    except KeyboardInterrupt:
        return 130
    return run()
