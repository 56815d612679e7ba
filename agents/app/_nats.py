"""``swarmbus nats``, and the embedded server's lifetime as the commands see it."""

from __future__ import annotations

import argparse
import signal
import sys

import anyio

from swarmbus.bus import EmbeddedServer
from swarmbus.protocols import ExternalError

__all__ = ["cmd_nats", "watch_server"]


async def cmd_nats(args: argparse.Namespace) -> int:
    died: list[str] = []
    async with EmbeddedServer(port=args.port, data_dir=args.data_dir) as server:
        print(f"nats-server with JetStream on {server.url} (data in {server.data_dir}); "
              "Ctrl-C stops it", file=sys.stderr)
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_server, server, tg.cancel_scope, died)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break  # leaving the block stops the server: never leave it orphaned
            tg.cancel_scope.cancel()
    if died:
        raise ExternalError(died[0])
    return 0


async def watch_server(server: EmbeddedServer, scope: anyio.CancelScope, died: list[str]) -> None:
    """Cancel ``scope`` when the embedded server dies, saying so in ``died``: a command
    must end with its server (a supervisor restarts both), not wait on without it."""
    code = await server.wait()
    died.append(f"the embedded nats-server exited with {code} (its log: "
                f"{server.data_dir}/nats-server.log); restart to resume")
    scope.cancel()
