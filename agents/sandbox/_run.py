"""One sandboxed pytest run, from the submission to the report."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Sequence
from contextlib import suppress
from functools import cache
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, Process

from swarmbus.protocols import ConfigError, SourceFile, TestReport

from ._cgroup import RunCgroup, sweep_stale_cgroups
from ._errors import SandboxUnavailableError
from ._fs import RunDir, check_files, private_base, sweep_stale
from ._isolation import Isolation, resolve
from ._limits import DEFAULT_LIMITS, SandboxLimits
from ._plan import interpreter_dirs, plan
from ._report import build_report, parse_report

__all__ = ["run_acceptance", "run_tests"]

_DRAIN_GRACE_S = 2.0
_KILL_WAIT_S = 3.0
_CLEANUP_S = 5.0
_REPORT_CAP = 1 << 20


async def run_tests(
    files: Sequence[SourceFile],
    *,
    limits: SandboxLimits = DEFAULT_LIMITS,
    python: str = sys.executable,
) -> TestReport:
    """Runs the submission's own pytest suite in the sandbox and reports what happened.

    The submission is written into a fresh box and ``python`` (which must have pytest)
    runs it under the isolation ``limits.isolation`` selects (``TestReport.isolation``
    names it). The counts in the report come from the process that ran the submitted
    code (``self_reported``): a hostile submission can forge them, so treat them as
    claims; ``timed_out``, ``exit_code`` when killed by a signal, and ``limits_hit`` are
    observed from outside. ``ok`` is never true when no test passed.

    Never raises for a bad submission: unsafe paths (absolute, ``..``), too many or too
    large files, a run with no tests, a crash, a hang or a forged report are reported.
    Raises ``SandboxUnavailableError`` (a ``ConfigError``) when the required isolation
    is missing here, ``ConfigError`` when ``python`` cannot run or lacks pytest. Returns
    within ``limits.timeout_s`` plus a few seconds of teardown, also when cancelled;
    when it returns, no process of the run is left.
    """
    return await _run(files, (), limits, python)


async def run_acceptance(
    files: Sequence[SourceFile],
    tests: Sequence[SourceFile],
    *,
    limits: SandboxLimits = DEFAULT_LIMITS,
    python: str = sys.executable,
) -> TestReport:
    """Runs hidden acceptance ``tests`` (pytest files no model has seen) against the
    submission ``files``, in a run of their own, and reports it (``kind="acceptance"``).

    The tests sit in a read-only directory beside the submission (the submission's
    modules are importable, its ``conftest.py`` and ini files are ignored). Before any
    submitted code is imported, the runner reads a per-run random token from a pipe;
    it hands the token back only when the session ended with exit status 0 after every
    test ran and passed. ``ok`` requires exit code 0 *and* that token
    (``token_verified``), so a submission that exits early (``os._exit(0)`` at import),
    or prints a fake report, fails. What it does not prove: code that introspects the
    runner (finds the token in memory, patches pytest) or returns objects equal to
    everything can still pass; hidden tests should compare with plain values.

    Raises ``ConfigError`` if ``tests`` is empty; otherwise as ``run_tests``.
    """
    if not tests:
        raise ConfigError("run_acceptance needs at least one acceptance test file")
    return await _run(files, tests, limits, python)


@cache
def _sweep_once(base: Path) -> None:
    """Once per process: remove what SIGKILLed daemons left (run directories, cgroups)."""
    sweep_stale(base)
    sweep_stale_cgroups()


async def _run(
    files: Sequence[SourceFile], hidden: Sequence[SourceFile], limits: SandboxLimits,
    python: str,
) -> TestReport:  # fmt: skip
    kind = "acceptance" if hidden else "submitted"
    bounds = {"max_files": limits.max_files, "max_total_bytes": limits.max_total_bytes}
    problems = check_files(files, **bounds) + check_files(hidden, **bounds)
    if problems:
        lines = "\n".join(f"[sandbox] rejected {p}" for p in problems)
        return TestReport(kind=kind, errors=len(problems), self_reported=False,
                          output=f"{lines}\n[sandbox] nothing was run")  # fmt: skip
    iso = await anyio.to_thread.run_sync(resolve, limits)
    await anyio.to_thread.run_sync(interpreter_dirs, python)
    base = await anyio.to_thread.run_sync(private_base)
    await anyio.to_thread.run_sync(_sweep_once, base)
    try:
        run = await anyio.to_thread.run_sync(RunDir, base)
    except OSError as exc:
        raise SandboxUnavailableError(f"cannot create a run directory in {base}: {exc}") from exc
    try:
        try:
            await anyio.to_thread.run_sync(run.write, files, hidden)
        except OSError as exc:
            return TestReport(kind=kind, errors=1, self_reported=False, isolation=iso.describe(),
                              output=f"[sandbox] could not write the submission: {exc}")
        return await _execute(iso, limits, run, python, [h.path for h in hidden])
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_S):
            await anyio.to_thread.run_sync(run.close, abandon_on_cancel=True)


class _Capped:
    """Keeps the first and last bytes of a stream, counting what it drops."""

    def __init__(self, limit: int) -> None:
        self.head_cap, self.tail_cap = limit // 2, limit - limit // 2
        self.head, self.tail, self.dropped = bytearray(), bytearray(), 0
        self.done = anyio.Event()

    def add(self, chunk: bytes) -> None:
        room = self.head_cap - len(self.head)
        self.head += chunk[: max(room, 0)]
        self.tail += chunk[max(room, 0) :]
        if len(self.tail) > self.tail_cap:
            self.dropped += len(self.tail) - self.tail_cap
            del self.tail[: len(self.tail) - self.tail_cap]

    async def drain(self, stream: ByteReceiveStream) -> None:
        try:
            async for chunk in stream:
                self.add(chunk)
        finally:
            self.done.set()

    def text(self) -> str:
        cut = f"\n[sandbox] ... {self.dropped} bytes of output truncated ...\n"
        return (self.head + (cut.encode() if self.dropped else b"") + self.tail).decode(
            "utf-8", "replace"
        )


class _Pipe:
    """The parent's read end of a pipe from the child: read without blocking, up to
    ``cap`` bytes (the rest is discarded), until every writer has closed it."""

    def __init__(self, cap: int, *, marker: bytes = b"\n") -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        self.cap, self.data, self.overflow = cap, bytearray(), False
        self.marker, self.marked = marker, anyio.Event()  # set once marker arrived, or EOF
        self.done = anyio.Event()

    def child_end(self) -> int:
        os.set_inheritable(self.write_fd, True)
        return self.write_fd

    def close_child_end(self) -> None:
        # Once only: a second close could hit a number another run has reused since.
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    async def drain(self) -> None:
        try:
            while True:
                await anyio.wait_readable(self.read_fd)
                try:
                    chunk = os.read(self.read_fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                room = self.cap - len(self.data)
                self.data += chunk[: max(room, 0)]
                self.overflow |= len(chunk) > room
                if self.marker in chunk:
                    self.marked.set()
        finally:
            self.marked.set()
            self.done.set()

    def close(self) -> None:
        self.close_child_end()
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1


class _Tree:
    """Everything one run started, and how to be sure it is gone."""

    def __init__(self, proc: Process, cg: RunCgroup | None) -> None:
        self.proc, self.cg, self.pidfd = proc, cg, -1

    def watch_init(self, info: bytes) -> None:
        """bwrap's --info-fd names the sandbox's pid 1, whose end ends the namespace."""
        with suppress(ValueError, KeyError, TypeError, OSError):
            pid = int(json.JSONDecoder().raw_decode(info.decode())[0]["child-pid"])
            if self.pidfd < 0:
                self.pidfd = os.pidfd_open(pid)

    async def kill(self) -> None:
        """SIGKILLs the tree and waits (bounded) until no process of it is left."""
        first = True
        with anyio.move_on_after(_KILL_WAIT_S):
            while True:
                if self.cg is not None:
                    self.cg.kill()
                # The session leader's group: bwrap (whose pid 1 then dies), or the child and
                # what stayed in its group. Once the leader is reaped its number could be
                # reused, so only while it is not, and in the round right after.
                if self.proc.returncode is None or first:
                    with suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                first = False
                if await self._gone():
                    return
                await anyio.sleep(0.02)

    async def _gone(self) -> bool:
        if self.proc.returncode is None:
            with anyio.move_on_after(0.2):
                await self.proc.wait()
            if self.proc.returncode is None:
                return False
        if self.pidfd >= 0:
            with anyio.move_on_after(0.2):
                await anyio.wait_readable(self.pidfd)
                self.close()
            if self.pidfd >= 0:
                return False
        return self.cg is None or not self.cg.pids()

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


async def _execute(
    iso: Isolation, limits: SandboxLimits, run: RunDir, python: str, hidden: list[str]
) -> TestReport:
    token = secrets.token_hex(16)  # authenticates the runner's report line
    pipes = {"status": _Pipe(64 << 10), "report": _Pipe(_REPORT_CAP),
             "info": _Pipe(4096, marker=b"}")}  # fmt: skip
    token_r, token_w = os.pipe2(os.O_CLOEXEC)
    os.write(token_w, (token or "").encode() + b"\n")
    os.close(token_w)
    os.set_inheritable(token_r, True)
    fds: dict[str, int | None] = {name: p.child_end() for name, p in pipes.items()}
    fds["token"] = token_r
    if iso.backend != "bubblewrap":
        fds["info"] = None
    cg = None
    try:
        if "memory" in iso.cgroups or "pids" in iso.cgroups:
            with suppress(OSError):
                cg = await anyio.to_thread.run_sync(lambda: RunCgroup.create(
                    f"swarmbus-{run.name}", memory_bytes=limits.memory_mb << 20,
                    max_tasks=limits.max_processes))  # fmt: skip
        p = await anyio.to_thread.run_sync(lambda: plan(
            iso, limits, run, python, procs=cg.procs if cg else [], fds=fds, hidden=hidden))
        try:
            proc = await anyio.open_process(
                p.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, cwd=p.cwd, env=p.env, start_new_session=True,
                pass_fds=[fd for fd in fds.values() if fd is not None],
            )  # fmt: skip
        except OSError as exc:
            raise ConfigError(f"cannot start the sandbox ({p.argv[0]!r}): {exc}") from exc
        finally:
            os.close(token_r)
            token_r = -1
            for pipe in pipes.values():
                pipe.close_child_end()
        tree = _Tree(proc, cg)
        output = _Capped(limits.max_output_bytes)
        try:
            async with anyio.create_task_group() as tg:
                assert proc.stdout is not None
                tg.start_soon(output.drain, proc.stdout)
                for pipe in pipes.values():
                    tg.start_soon(pipe.drain)
                with anyio.move_on_after(limits.timeout_s):
                    if iso.backend == "bubblewrap":  # bwrap names the sandbox's pid 1 first
                        await pipes["info"].marked.wait()
                        tree.watch_init(bytes(pipes["info"].data))
                    await proc.wait()
                timed_out = proc.returncode is None
                await tree.kill()  # leftovers would hold the pipes open
                with anyio.move_on_after(_DRAIN_GRACE_S):
                    await output.done.wait()
                    for pipe in pipes.values():
                        await pipe.done.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await tree.kill()
                tree.close()
                with anyio.move_on_after(1):
                    await proc.aclose()
        limits_hit = cg.limits_hit() if cg else []
    finally:
        if token_r >= 0:
            os.close(token_r)
        for pipe in pipes.values():
            pipe.close()
        if cg is not None:
            cg.kill()
            cg.remove()
    status = bytes(pipes["status"].data).decode("utf-8", "replace")
    if not status.startswith("ready") and not timed_out:
        raise SandboxUnavailableError(
            f"the sandbox could not start ({iso.describe()}): "
            f"{(status or output.text()).strip()[-1500:]}"
        )
    report = await parse_report(bytes(pipes["report"].data), token)
    return build_report(iso, limits, proc.returncode, timed_out, output, report, limits_hit,
                   token if hidden else None)  # fmt: skip
