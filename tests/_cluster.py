"""A NATS cluster on loopback for tests: N nats-server processes from the wheel, each with
JetStream, its own data directory and a route to every other node."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import nats
import nats.errors
import nats.js.errors
from nats.js.api import StorageType, StreamConfig

from swarmbus.bus import EmbeddedServer, free_port


class Cluster:
    """``async with Cluster(tmp_path, size=3) as cluster:`` starts the nodes and returns
    once JetStream has a meta leader (streams with replicas can be created then)."""

    def __init__(self, root: Path, *, size: int = 3, name: str = "swarmbus") -> None:
        self.root = root
        self.name = name
        route_ports = [free_port() for _ in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
        self.nodes: list[EmbeddedServer] = []
        for i, port in enumerate(route_ports):
            conf = root / f"n{i}.conf"
            conf.write_text(
                f"server_name: n{i}\n"
                # The client port and the store dir come from EmbeddedServer's flags.
                f"cluster {{\n  name: {name}\n  listen: 127.0.0.1:{port}\n"
                f"  routes: [{routes}]\n}}\n"
            )
            self.nodes.append(EmbeddedServer(data_dir=root / f"n{i}", config_file=conf))

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, server_name: str) -> EmbeddedServer:
        return self.nodes[int(server_name.removeprefix("n"))]

    async def start(self, *, timeout_s: float = 30) -> Cluster:
        async with anyio.create_task_group() as tg:
            for n in self.nodes:
                tg.start_soon(n.start)
        await self.wait_jetstream(timeout_s=timeout_s)
        await self.wait_placement(timeout_s=timeout_s)
        return self

    async def wait_placement(self, *, timeout_s: float = 30) -> None:
        """Until a stream with a replica on every node can be made: answering the API is
        not enough, the meta leader may still see a peer offline ("no suitable peers for
        placement") for a moment after start."""
        deadline = time.monotonic() + timeout_s
        nc = await nats.connect(self.urls[0], allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=2.0)
            while True:
                try:
                    await js.add_stream(StreamConfig(
                        name="CLUSTER_READY", subjects=["cluster.ready"],
                        num_replicas=len(self.nodes), storage=StorageType.MEMORY))
                    await js.delete_stream("CLUSTER_READY")
                    return
                except (nats.errors.Error, nats.js.errors.Error) as e:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"cluster cannot place a stream: {e!r}") from e
                    await anyio.sleep(0.2)
        finally:
            await nc.close()

    async def wait_jetstream(self, *, timeout_s: float = 30) -> None:
        """Until every running node answers the JetStream API (a meta leader is elected)."""
        deadline = time.monotonic() + timeout_s
        for n in self.nodes:
            if not n.running:
                continue
            nc = await nats.connect(n.url, allow_reconnect=False)
            try:
                while True:
                    try:
                        msg = await nc.request("$JS.API.INFO", b"", timeout=0.5)
                        if "error" not in json.loads(msg.data):
                            break
                    except nats.errors.Error:
                        pass
                    if time.monotonic() > deadline:
                        log = n.log_text()[-2000:]
                        raise TimeoutError(f"JetStream on {n.url} not ready: {log}")
                    await anyio.sleep(0.1)
            finally:
                await nc.close()

    async def stop(self) -> None:
        for n in self.nodes:
            await n.stop()

    async def __aenter__(self) -> Cluster:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
