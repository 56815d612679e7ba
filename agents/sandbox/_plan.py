"""Turns limits, an isolation and a run directory into the command that starts a run."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from swarmbus.protocols import ConfigError

from ._fs import RunDir
from ._isolation import SANDBOX_UID, Isolation
from ._limits import SandboxLimits
from ._seccomp import program

__all__ = ["Plan", "child_env", "interpreter_dirs", "plan"]

_CHILD = Path(__file__).with_name("_child.py")
_ENV_ALLOW = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")
_SYSTEM = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf",
        "ssl/certs", "ca-certificates", "alternatives", "mime.types", "os-release")  # fmt: skip
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_TOO_BROAD = {"/", "/home", "/root", "/etc", "/proc", "/sys", "/dev", "/run", "/var", "/tmp"}
_LAYOUT = (
    "import json, os, site, sys, sysconfig\n"
    "paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,\n"
    "         os.path.dirname(sys.executable), *site.getsitepackages(),\n"
    "         *(sysconfig.get_paths()[k]\n"
    "           for k in ('stdlib', 'platstdlib', 'purelib', 'platlib'))]\n"
    "print(json.dumps([sys.version_info[:2], paths]))\n"
)
_CGROUP_JOIN = (  # join each cgroup named before "--", then become the sandbox command
    'for f do [ "$f" = -- ] && break; echo 0 > "$f" || exit 125; shift; done; shift; exec "$@"'
)


@cache
def interpreter_dirs(python: str) -> tuple[str, ...]:
    """The directories ``python`` reads at run time (prefixes, stdlib, site-packages),
    real paths, outermost only. Raises ``ConfigError`` if it cannot be run or lacks pytest."""
    try:
        out = subprocess.run([python, "-I", "-c", _LAYOUT + "import pytest\n"],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        _, raw = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise ConfigError(
            f"cannot use {python!r} as the sandbox interpreter (it must run and have pytest "
            f"installed): {str(detail).strip()[-300:]}"
        ) from exc
    dirs = {os.path.realpath(p) for p in raw if os.path.isdir(p)} | {
        os.path.abspath(p) for p in raw if os.path.isdir(p)
    }
    dirs = {d for d in dirs if not d.startswith("/usr/")}  # /usr is bound whole
    broad = sorted(dirs & _TOO_BROAD)
    if broad:
        raise ConfigError(f"{python!r} lives in {broad[0]}: too broad to expose to the sandbox")
    ordered = sorted(dirs, key=len)
    return tuple(d for i, d in enumerate(ordered)
                 if not any(d.startswith(o + "/") for o in ordered[:i]))  # fmt: skip


def child_env(home: str, tmp: str) -> dict[str, str]:
    """The child's whole environment: an allow-list, with HOME and TMPDIR in the box."""
    env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(HOME=home, TMPDIR=tmp, TMP=tmp, TEMP=tmp, USER="sandbox", LOGNAME="sandbox",
               PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1",
               # One string hash for every run: the same code prints its sets and dicts
               # of strings in the same order each time, so its report reads the same.
               PYTHONHASHSEED="0",
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", NO_COLOR="1")  # fmt: skip
    return env


@dataclass
class Plan:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    config: dict[str, object] = field(default_factory=dict)


def plan(
    iso: Isolation, limits: SandboxLimits, run: RunDir, python: str, *,
    procs: list[str], fds: dict[str, int | None], hidden: list[str],
) -> Plan:  # fmt: skip
    """The command for one run. ``procs``: cgroup files to join first; ``fds``: the
    child's ends of the token, status and report pipes; ``hidden``: acceptance test
    paths (relative), run from a read-only directory with conftest files ignored."""
    bwrap = iso.backend == "bubblewrap"
    sandbox = Path("/sandbox") if bwrap else run.path
    box = "/box" if bwrap else str(run.box)
    work = f"{box}/work"
    reads = [*interpreter_dirs(python), str(sandbox / "boot"), str(sandbox / "src")]
    if bwrap:
        # not /proc: even the sandbox's own shows its init's command line and the host's
        # kernel details, and nothing a test needs is there
        reads += ["/usr", "/etc", "/dev", *(d for d in _SYSTEM if os.path.isdir(d))]
    else:
        reads += ["/usr", *_SYSTEM, "/etc/passwd", "/etc/group", "/etc/hosts",
                  "/etc/resolv.conf", *(f"/etc/{name}" for name in _ETC)]  # fmt: skip
    dump_after = max(limits.timeout_s / 2, limits.timeout_s - 10)  # name the stuck test
    ini = str(sandbox / "boot" / "pytest.ini")
    rootdir = str(sandbox / "src" / "hidden") if hidden else work  # names tests relative to it
    args = ["-q", "-p", "no:cacheprovider", "-c", ini, f"--rootdir={rootdir}",
            "--import-mode=append", "-o", f"faulthandler_timeout={dump_after:.3f}",
            *(a for name in limits.pytest_plugins for a in ("-p", name))]  # fmt: skip
    pythonpath = [work]
    if hidden:
        args += ["--noconftest", *(str(sandbox / "src" / "hidden" / h) for h in hidden)]
        pythonpath = [str(sandbox / "src" / "hidden"), work]
    seccomp = program() if iso.seccomp else None
    config: dict[str, object] = {
        "box": box, "src": str(sandbox / "src" / "files"), "work": work,
        "mount_box": bwrap and iso.root, "uid": SANDBOX_UID if bwrap and iso.root else None,
        "disk_mb": limits.disk_mb, "max_inodes": limits.max_inodes, "cpu_s": limits.cpu_s,
        "memory_mb": limits.memory_mb, "file_size_mb": limits.file_size_mb,
        "max_processes": limits.max_processes, "max_open_files": limits.max_open_files,
        "nproc": not iso.tree_limits, "allow_network": limits.allow_network,
        "require_landlock": iso.backend == "landlock", "reads": reads,
        "devices": list(_DEVICES), "writes": [box, "/dev/shm"] if bwrap else [box],
        "seccomp": seccomp.hex() if seccomp else "", "parent": 0 if bwrap else os.getpid(),
        "token_fd": fds["token"], "status_fd": fds["status"], "report_fd": fds["report"],
        "pytest_args": args, "pythonpath": pythonpath,
    }  # fmt: skip
    _write_boot(run)
    child = [python, "-I", "-u", str(sandbox / "boot" / "child.py"), json.dumps(config)]
    argv = _bwrap_argv(iso, limits, run, python, fds["info"]) + child if bwrap else child
    if procs:
        argv = ["/bin/sh", "-c", _CGROUP_JOIN, "sh", *procs, "--", *argv]
    env = child_env(f"{box}/home", f"{box}/tmp")
    return Plan(argv, env, "/" if bwrap else str(run.path), config)


def _write_boot(run: RunDir) -> None:
    (run.boot / "child.py").write_bytes(_CHILD.read_bytes())
    (run.boot / "pytest.ini").write_text("[pytest]\n")
    etc = run.boot / "etc"
    etc.mkdir(mode=0o755)
    u = SANDBOX_UID
    (etc / "passwd").write_text(f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                f"sandbox:x:{u}:{u}:sandbox:/box/home:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\nsandbox:x:{u}:\n")
    (etc / "hosts").write_text("127.0.0.1 localhost sandbox\n::1 localhost\n")
    for path in [run.boot, *run.boot.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _bwrap_argv(
    iso: Isolation, limits: SandboxLimits, run: RunDir, python: str, info_fd: int | None
) -> list[str]:
    assert iso.bwrap is not None
    argv = [iso.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--hostname", "sandbox"]  # fmt: skip
    if not limits.allow_network:
        argv.append("--unshare-net")
    if iso.root:  # privileged bwrap: the child mounts its box, then drops to SANDBOX_UID
        argv += ["--cap-drop", "ALL"]
        for cap in ("SYS_ADMIN", "SETUID", "SETGID", "SETPCAP", "CHOWN"):
            argv += ["--cap-add", f"CAP_{cap}"]
        argv += ["--perms", "0700", "--dir", "/box"]
    else:
        u = str(SANDBOX_UID)
        argv += ["--unshare-user", "--disable-userns", "--uid", u, "--gid", u]
        size = str(limits.disk_mb << 20)
        argv += ["--size", size, "--perms", "0700", "--tmpfs", "/box"]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    made: set[str] = set()

    def ro_bind(src: str, dest: str) -> None:
        parts = Path(dest).parts
        for i in range(2, len(parts)):
            parent = str(Path(*parts[:i]))
            if parent not in made:
                made.add(parent)
                argv.extend(["--perms", "0755", "--dir", parent])
        argv.extend(["--ro-bind", src, dest])

    ro_bind("/usr", "/usr")
    for d in _SYSTEM:
        if os.path.islink(d):
            argv.extend(["--symlink", os.readlink(d), d])
        elif os.path.isdir(d):
            ro_bind(d, d)
    for d in interpreter_dirs(python):
        ro_bind(d, d)
    argv += ["--perms", "0755", "--dir", "/etc"]
    for name in _ETC:
        if os.path.exists(f"/etc/{name}"):
            ro_bind(f"/etc/{name}", f"/etc/{name}")
    for name in ("passwd", "group", "hosts"):
        ro_bind(str(run.boot / "etc" / name), f"/etc/{name}")
    ro_bind(str(run.boot), "/sandbox/boot")
    ro_bind(str(run.src), "/sandbox/src")
    argv += ["--proc", "/proc", "--dev", "/dev"]
    if "/tmp" not in made:  # else an interpreter lives under /tmp; TMPDIR is in the box anyway
        argv += ["--symlink", "/box/tmp", "/tmp"]
    if not iso.root:
        argv += ["--size", str(limits.disk_mb << 20), "--tmpfs", "/dev/shm"]
    argv += ["--chdir", "/", "--"]
    return argv
