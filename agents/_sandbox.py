"""Run submitted tests in a constrained subprocess (executable review, DESIGN.md section 6).

``run_tests`` writes the submitted files into a fresh temporary directory and runs
``python -m pytest`` there, with a wall-clock timeout and rlimits (CPU, address space,
file size, open files, no core dumps, processes when not root). The child gets an
environment built from an allow-list, so API keys and NATS credentials never reach
it, and HOME/TMPDIR point inside the sandbox. The child runs in its own session; on
timeout, on exit and on cancellation the whole group is killed, and a sweep of
``/proc`` kills any descendant that left the group (``setsid``) but still carries the
run's marker variable.

What is a security boundary, and what is not:

- On Linux with Landlock (kernel 5.13+, no root needed; CI has ABI 7) the child and
  every descendant, Python or not, can write only inside the sandbox directory and
  read only the interpreter, its packages, system libraries and a few ``/etc`` files
  (not HOME, not the project, not ``/proc``, so not the parent's environment or
  command line). From ABI 4 TCP bind/connect is refused unless ``allow_network``;
  from ABI 6 the child cannot signal processes outside the sandbox. This is a kernel
  boundary. Without Landlock the boot script says so in the output, and
  ``require_landlock`` turns that into a refusal to run.
- The audit hook installed through ``sitecustomize`` refuses Python-level writes
  outside the sandbox. It is advisory: ctypes, ``dir_fd`` tricks, non-Python
  subprocesses or a cleared ``PYTHONPATH`` get around it. Landlock is the boundary.
- Resource limits are per process (RLIMIT_AS, RLIMIT_CPU); a process tree can use
  more in total. RLIMIT_NPROC is ignored for root. Only the timeout bounds the tree.
- Landlock also denies ``/dev/shm``, so multiprocessing locks and pools fail inside.
- The child runs as the caller's user (no user namespace, no seccomp, no cgroup), so
  the kernel, UDP, and anything readable under the allowed paths stay exposed.
- The junit report is written by the process that runs the untrusted code, so a
  hostile submission can forge its counts. The sandbox protects the host, not the
  verdict.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path, PurePosixPath

import anyio
from anyio.abc import ByteReceiveStream
from pydantic import BaseModel, ConfigDict, Field

from swarmbus.protocols import ConfigError, SourceFile, TestReport

__all__ = ["DEFAULT_LIMITS", "SandboxLimits", "landlock_abi", "run_tests"]

_ENV_ALLOW = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")
_DRAIN_GRACE_S = 2.0
_MAX_JUNIT_BYTES = 8 << 20
_MAX_NAMES = 200
_NO_TESTS = 5  # pytest.ExitCode.NO_TESTS_COLLECTED


class SandboxLimits(BaseModel):
    """Bounds for one sandboxed test run. Per-process limits apply to every descendant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(60.0, gt=0, description="Wall clock; then the tree is killed.")
    cpu_s: int = Field(60, gt=0, description="CPU seconds per process (RLIMIT_CPU).")
    memory_mb: int = Field(1024, ge=64, description="Address space per process (RLIMIT_AS).")
    file_size_mb: int = Field(16, gt=0, description="Largest file a process may write.")
    max_output_bytes: int = Field(64_000, ge=1024, description="Head and tail are kept.")
    max_files: int = Field(200, gt=0, description="Files in one submission.")
    max_total_bytes: int = Field(5_000_000, gt=0, description="Submitted bytes in all.")
    max_processes: int = Field(64, gt=0, description="Extra processes (not enforced for root).")
    max_open_files: int = Field(256, ge=32)
    allow_network: bool = Field(False, description="Permit TCP bind/connect (Landlock 4+).")
    require_landlock: bool = Field(False, description="Refuse to run without Landlock.")
    pytest_plugins: tuple[str, ...] = Field((), description="Plugins for -p (no autoload).")


DEFAULT_LIMITS = SandboxLimits()


@cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is unavailable."""
    if sys.platform != "linux":
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = int(libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1)))
    return max(abi, 0)


async def run_tests(
    files: Sequence[SourceFile],
    *,
    limits: SandboxLimits = DEFAULT_LIMITS,
    python: str = sys.executable,
) -> TestReport:
    """Run the submission's pytest suite in the sandbox and report what happened.

    Never raises for a bad submission: unsafe paths (absolute, ``..``), too many or
    too large files, and a run with no tests are all reported in the ``TestReport``
    (``errors`` and ``output``; pytest's exit code 5 means no tests were collected).
    ``python`` must have pytest installed; ``ConfigError`` if it cannot be started.
    Cancelling the call kills the child's whole process tree.
    """
    problems = _check_files(files, limits)
    if problems:
        lines = "\n".join(f"[sandbox] rejected {p}" for p in problems)
        return TestReport(errors=len(problems), output=f"{lines}\n[sandbox] nothing was run")
    await anyio.to_thread.run_sync(_remove_stale_dirs)
    mkdtemp = partial(tempfile.mkdtemp, prefix=f"{_PREFIX}{os.getpid()}-")
    root = Path(await anyio.to_thread.run_sync(mkdtemp))
    try:
        try:
            layout = await anyio.to_thread.run_sync(_prepare, root, files)
        except OSError as exc:
            return TestReport(errors=1, output=f"[sandbox] could not write the submission: {exc}")
        return await _execute(layout, limits, python)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_remove, root)


_PREFIX = "swarmbus-sandbox-"


@cache
def _remove_stale_dirs() -> None:
    """Once per process: remove sandbox directories whose owner process is gone
    (a reviewer killed with SIGKILL cannot clean up after itself)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        owner = path.name[len(_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            _remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _bad_path(path: str) -> str | None:
    if not path.strip() or "\0" in path:
        return "empty path or NUL byte"
    if "\\" in path:
        return "backslash in path (use /)"
    pure = PurePosixPath(path)
    if pure.is_absolute():
        return "absolute path"
    if ".." in pure.parts:
        return "'..' in path"
    if not pure.parts:
        return "path names no file"
    return None


def _check_files(files: Sequence[SourceFile], limits: SandboxLimits) -> list[str]:
    problems: list[str] = []
    if len(files) > limits.max_files:
        problems.append(f"submission: {len(files)} files, the limit is {limits.max_files}")
    size = sum(len(f.content.encode("utf-8", "replace")) for f in files)
    if size > limits.max_total_bytes:
        problems.append(f"submission: {size} bytes, the limit is {limits.max_total_bytes}")
    seen: set[PurePosixPath] = set()
    for f in files:
        why = _bad_path(f.path)
        if why is None and PurePosixPath(f.path) in seen:
            why = "duplicate path"
        if why is not None:
            problems.append(f"{f.path!r}: {why}")
        else:
            seen.add(PurePosixPath(f.path))
    return problems


@dataclass(frozen=True)
class _Layout:
    root: Path  # ours: boot scripts live here, outside what the child may write
    boot: Path
    box: Path  # the only place the child may write
    work: Path  # cwd and submission


def _prepare(root: Path, files: Sequence[SourceFile]) -> _Layout:
    layout = _Layout(root, root / "boot", root / "box", root / "box" / "work")
    for d in (layout.boot, layout.work, layout.box / "home", layout.box / "tmp"):
        d.mkdir(parents=True)
    (layout.boot / "boot.py").write_text(_BOOT)
    (layout.boot / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    (layout.box / "pytest.ini").write_text("[pytest]\n")  # stops the ini search at the box
    work = layout.work.resolve()
    for f in files:
        target = (work / f.path).resolve()
        if not target.is_relative_to(work):  # defence in depth after _bad_path
            raise OSError(f"{f.path!r} escapes the sandbox")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content, encoding="utf-8", errors="replace")
    return layout


def _remove(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):  # a chmod through a link would touch the host
                with suppress(OSError):
                    os.chmod(path, 0o700)
    shutil.rmtree(root, ignore_errors=True)


def _child_env(layout: _Layout, token: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
    env.setdefault("PATH", os.defpath)
    tmp, home = str(layout.box / "tmp"), str(layout.box / "home")
    env.update(
        HOME=home, TMPDIR=tmp, TMP=tmp, TEMP=tmp, USER="sandbox", LOGNAME="sandbox",
        PYTHONPATH=str(layout.boot), PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1",
        PYTHONUNBUFFERED="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", NO_COLOR="1",
        SWARMBUS_SANDBOX_ROOT=str(layout.box), SWARMBUS_SANDBOX_TOKEN=token,
    )  # fmt: skip
    return env


class _Capped:
    """Keeps the first and last bytes of a stream, counting what it drops."""

    def __init__(self, limit: int) -> None:
        self.head_cap, self.tail_cap = limit // 2, limit - limit // 2
        self.head, self.tail, self.dropped = bytearray(), bytearray(), 0

    async def drain(self, stream: ByteReceiveStream, done: anyio.Event) -> None:
        async for chunk in stream:
            room = self.head_cap - len(self.head)
            self.head += chunk[: max(room, 0)]
            self.tail += chunk[max(room, 0) :]
            if len(self.tail) > self.tail_cap:
                self.dropped += len(self.tail) - self.tail_cap
                del self.tail[: len(self.tail) - self.tail_cap]
        done.set()

    def text(self) -> str:
        cut = f"\n[sandbox] ... {self.dropped} bytes of output truncated ...\n"
        return (self.head + (cut.encode() if self.dropped else b"") + self.tail).decode(
            "utf-8", "replace"
        )


def _sweep(token: str) -> int:
    """SIGKILL every process whose environment carries the run's marker."""
    needle = f"SWARMBUS_SANDBOX_TOKEN={token}".encode()
    killed = 0
    with suppress(OSError), os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as fh:
                    environ = fh.read()
                if needle in environ.split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
            except OSError:
                continue
    return killed


async def _kill_tree(pid: int, token: str) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(50):  # a fork loop outside the group needs a few rounds
        if not await anyio.to_thread.run_sync(_sweep, token):
            break


def _command(layout: _Layout, limits: SandboxLimits, python: str) -> list[str]:
    config = {
        "box": str(layout.box), "boot": str(layout.boot), "cpu_s": limits.cpu_s,
        "memory_mb": limits.memory_mb, "file_size_mb": limits.file_size_mb,
        "max_processes": limits.max_processes, "max_open_files": limits.max_open_files,
        "allow_network": limits.allow_network, "require_landlock": limits.require_landlock,
        "parent": os.getpid(),
    }  # fmt: skip
    plugins = [arg for name in limits.pytest_plugins for arg in ("-p", name)]
    dump_after = max(limits.timeout_s / 2, limits.timeout_s - 10)  # name the stuck test
    return [
        python, "-I", str(layout.boot / "boot.py"), json.dumps(config),
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins,
        f"--rootdir={layout.work}", f"--junitxml={layout.box / 'junit.xml'}",
        "-o", "junit_family=xunit1", "-o", f"faulthandler_timeout={dump_after:.3f}",
    ]  # fmt: skip


async def _execute(layout: _Layout, limits: SandboxLimits, python: str) -> TestReport:
    token = secrets.token_hex(16)
    output = _Capped(limits.max_output_bytes)
    drained = anyio.Event()
    try:
        proc = await anyio.open_process(
            _command(layout, limits, python),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=layout.work,
            env=_child_env(layout, token),
            start_new_session=True,
        )
    except OSError as exc:
        raise ConfigError(f"cannot start the sandbox interpreter {python!r}: {exc}") from exc
    try:
        assert proc.stdout is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(output.drain, proc.stdout, drained)
            with anyio.move_on_after(limits.timeout_s):
                await proc.wait()
            timed_out = proc.returncode is None
            await _kill_tree(proc.pid, token)  # leftovers would hold the pipe open
            with anyio.move_on_after(_DRAIN_GRACE_S):
                await drained.wait()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            # killpg reaches the leader too; Process.kill() would poll() and reap the
            # child behind asyncio's watcher, which then reports exit code 255.
            await _kill_tree(proc.pid, token)
            await proc.aclose()
    passed, failed, errors, names = await anyio.to_thread.run_sync(
        _parse_junit, layout.box / "junit.xml"
    )
    notes = _notes(proc.returncode, timed_out, limits)
    text = output.text() + "".join(f"\n[sandbox] {note}" for note in notes)
    return TestReport(
        passed=passed,
        failed=failed,
        errors=errors,
        failed_tests=names,
        exit_code=proc.returncode,
        timed_out=timed_out,
        output=text,
        truncated=output.dropped > 0,
    )


def _notes(code: int | None, timed_out: bool, limits: SandboxLimits) -> list[str]:
    if timed_out:
        return [f"timed out after {limits.timeout_s:g}s; the process tree was killed"]
    if code == _NO_TESTS:
        return ["no tests were collected: the submission contains no tests"]
    if code is not None and code < 0:
        with suppress(ValueError):
            name = signal.Signals(-code).name
            hint = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (CPU or memory limit)"}
            return [f"killed by {name}{hint.get(name, '')}"]
    return []


def _parse_junit(path: Path) -> tuple[int, int, int, list[str]]:
    try:
        if path.stat().st_size > _MAX_JUNIT_BYTES:
            return 0, 0, 0, []
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return 0, 0, 0, []
    counts = {"passed": 0, "failure": 0, "error": 0, "skipped": 0}
    names: list[str] = []
    for case in tree.iter("testcase"):
        tags = {child.tag for child in case}
        outcome = next((t for t in ("failure", "error", "skipped") if t in tags), "passed")
        counts[outcome] += 1
        if outcome in ("failure", "error") and len(names) < _MAX_NAMES:
            names.append(_nodeid(case)[:300])
    return counts["passed"], counts["failure"], counts["error"], names


def _nodeid(case: ET.Element) -> str:
    file, classname, name = (case.get(k, "") for k in ("file", "classname", "name"))
    module = re.sub(r"\.py$", "", file).replace("/", ".")
    if file and (classname == module or classname.startswith(module + ".")):
        return "::".join([file, *classname[len(module) :].split(".")[1:], name])
    return "::".join(part for part in (classname, name) if part)


# Runs in the child before any submitted code: rlimits, Landlock, then exec pytest.
_BOOT = r"""
import contextlib, ctypes, json, os, resource, signal, struct, sys

cfg = json.loads(sys.argv[1])
MB = 1 << 20

def clamp(res, soft, hard=None):
    hard = soft if hard is None else hard
    cur = resource.getrlimit(res)[1]
    if cur != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur), min(hard, cur)
    resource.setrlimit(res, (soft, hard))

def tasks_of(uid):  # RLIMIT_NPROC counts every task of the user, not just ours
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid == uid:
                n += len(os.listdir(f"/proc/{pid}/task"))
    return n

def landlock():
    if sys.platform != "linux":
        return "Landlock needs Linux"
    libc = ctypes.CDLL(None, use_errno=True)
    sc = libc.syscall
    sc.restype = ctypes.c_long
    abi = sc(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return "Landlock unavailable: " + os.strerror(ctypes.get_errno())
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)
    fs |= 1 << 15 if abi >= 5 else 0
    read, file_rights = 1 | 4 | 8, 1 | 2 | 4 | 1 << 14 | 1 << 15
    net = 3 if abi >= 4 and not cfg["allow_network"] else 0
    scoped = 3 if abi >= 6 else 0
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", fs, net, scoped)[:size], size)
    rs = sc(444, attr, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if rs < 0:
        return "landlock_create_ruleset: " + os.strerror(ctypes.get_errno())

    def allow(path, access):
        if not os.path.exists(path):
            return
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        access &= fs if os.path.isdir(path) else fs & file_rights
        rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
        failed = sc(445, ctypes.c_int(rs), ctypes.c_int(1), rule, ctypes.c_uint32(0))
        os.close(fd)
        if failed:
            raise OSError(ctypes.get_errno(), "landlock_add_rule", path)

    import site, sysconfig
    reads = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), cfg["boot"],
             "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/dev", "/etc/ld.so.cache",
             "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
             "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf",
             "/etc/ssl", "/etc/ca-certificates", "/etc/mime.types", "/etc/os-release"]
    reads += site.getsitepackages() + list(sysconfig.get_paths().values())
    try:
        for path in reads:
            allow(path, read)
        allow(cfg["box"], fs)
        allow("/dev/null", read | 2 | 1 << 14)
    except OSError as exc:
        return str(exc)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if sc(446, ctypes.c_int(rs), ctypes.c_uint32(0)):
        return "landlock_restrict_self: " + os.strerror(ctypes.get_errno())
    os.close(rs)
    return None

clamp(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
clamp(resource.RLIMIT_AS, cfg["memory_mb"] * MB)
clamp(resource.RLIMIT_FSIZE, cfg["file_size_mb"] * MB)
clamp(resource.RLIMIT_NOFILE, cfg["max_open_files"])
clamp(resource.RLIMIT_CORE, 0)
if os.geteuid() != 0 and os.path.isdir("/proc"):  # root ignores RLIMIT_NPROC
    clamp(resource.RLIMIT_NPROC, tasks_of(os.getuid()) + cfg["max_processes"])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversize writes fail with EFBIG instead
problem = landlock()
if problem:
    if cfg["require_landlock"]:
        sys.stderr.write("[sandbox] refusing to run without Landlock: %s\n" % problem)
        sys.exit(3)
    sys.stderr.write("[sandbox] %s; writes are guarded by an audit hook only\n" % problem)
if sys.platform == "linux":  # die with the agent: a SIGKILLed reviewer leaves no orphan
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != cfg["parent"]:
        sys.exit(4)
os.execv(sys.argv[2], sys.argv[2:])
"""

# Imported by every Python process in the sandbox (PYTHONPATH). Advisory: see the docstring.
_SITECUSTOMIZE = r"""
import os, sys

def _install():
    root = os.environ.get("SWARMBUS_SANDBOX_ROOT")
    if not root:
        return
    root = os.path.realpath(root)
    prefix = root + os.sep
    write = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    devices = {"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty"}
    events = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
              "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,),
              "os.chown": (0,), "os.utime": (0,), "os.setxattr": (0,),
              "os.removexattr": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,)}

    def inside(path):
        if path is None or isinstance(path, int):
            return True
        path = os.fsdecode(path)
        if path in devices:
            return True
        real = os.path.realpath(path)
        return real == root or real.startswith(prefix)

    def hook(event, args):
        __tracebackhide__ = True  # pytest shows the refused call, not this hook
        if event == "open":
            targets = args[:1] if isinstance(args[2], int) and args[2] & write else ()
        elif event in events:
            targets = [args[i] for i in events[event] if i < len(args)]
        else:
            return
        for target in targets:
            if not inside(target):
                raise PermissionError(13, "swarmbus sandbox: no writes outside the sandbox",
                                      os.fsdecode(target))

    sys.addaudithook(hook)

_install()
del _install
"""
