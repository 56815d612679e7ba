"""Which isolation this host can give a run, and what it does and does not cover."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from ._cgroup import cgroup_support
from ._errors import SandboxUnavailableError
from ._limits import DEFAULT_LIMITS, SandboxLimits
from ._seccomp import program

__all__ = ["Isolation", "check_isolation", "install_hint", "landlock_abi", "resolve"]

SANDBOX_UID = 65534  # "nobody": the sandbox's uid when the daemon runs as root


@cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is unavailable."""
    if sys.platform != "linux":
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = int(libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1)))
    return max(abi, 0)


def install_hint() -> str:
    """The command that installs bubblewrap from this system's own packages."""
    ids: list[str] = []
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            if key in ("ID", "ID_LIKE"):
                ids += value.strip('"').split()
    except OSError:
        pass
    sudo = "" if os.geteuid() == 0 else "sudo "
    for family, command in (
        ("debian", "apt-get install bubblewrap"), ("ubuntu", "apt-get install bubblewrap"),
        ("fedora", "dnf install bubblewrap"), ("rhel", "dnf install bubblewrap"),
        ("suse", "zypper install bubblewrap"), ("arch", "pacman -S bubblewrap"),
        ("alpine", "apk add bubblewrap"),
    ):  # fmt: skip
        if family in ids:
            return sudo + command
    return "install bubblewrap (the `bwrap` command) from your distribution's packages"


@cache
def _probe_bwrap(path: str, root: bool) -> tuple[str, str]:
    """(version, problem): runs bwrap's version and a trivial sandbox with our flags."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        version = out.stdout.strip().removeprefix("bubblewrap ").strip()
        flags = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                 "--die-with-parent", "--new-session"]  # fmt: skip
        flags += (["--cap-drop", "ALL"] if root else
                  ["--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID)])
        tree = [arg for d in ("/usr", "/bin", "/lib", "/lib64")
                for arg in _system_bind(d)]  # fmt: skip
        trial = subprocess.run([path, *flags, *tree, "--proc", "/proc", "--dev", "/dev",
                                "--", "/bin/sh", "-c", "exit 0"],
                               capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return "", f"{path} cannot run: {exc}"
    if trial.returncode != 0:
        return version, f"{path} cannot create the sandbox here: {trial.stderr.strip()[:300]}"
    return version, ""


def _system_bind(d: str) -> list[str]:
    if os.path.islink(d):
        return ["--symlink", os.readlink(d), d]
    if os.path.isdir(d):
        return ["--ro-bind", d, d]
    return []


@dataclass(frozen=True)
class Isolation:
    """What one sandboxed run gets on this host. ``backend`` is the mechanism;
    ``describe()`` is one line for logs and reports; ``gaps`` lists what it does not
    isolate (empty for bubblewrap under a root daemon with cgroups)."""

    backend: Literal["bubblewrap", "landlock", "none"]
    bwrap: str | None = None
    bwrap_version: str = ""
    root: bool = False  # the daemon is root: bwrap runs privileged, the child drops to nobody
    landlock_abi: int = 0
    cgroups: str = "no cgroup"
    seccomp: bool = False

    @property
    def tree_limits(self) -> bool:
        return "memory" in self.cgroups and "pids" in self.cgroups

    def describe(self) -> str:
        ll = f"Landlock ABI {self.landlock_abi}" if self.landlock_abi else "no Landlock"
        sc = "seccomp" if self.seccomp else "no seccomp"
        limits = self.cgroups if self.tree_limits else f"{self.cgroups}: per-process limits"
        if self.backend == "bubblewrap":
            who = (f"uid {SANDBOX_UID} without capabilities" if self.root
                   else "an unprivileged user namespace")  # fmt: skip
            return (f"bubblewrap {self.bwrap_version}: {who}; new pid, net, ipc, uts and mount "
                    f"namespaces; box on a size-limited tmpfs; {ll}; {sc}; {limits}")
        if self.backend == "landlock":
            return (f"Landlock only (weaker): {ll}; {sc}; capabilities dropped; "
                    f"no namespaces; {limits}")
        return "no isolation: rlimits only (neither bubblewrap nor Landlock here)"

    @property
    def gaps(self) -> tuple[str, ...]:
        out: list[str] = []
        if self.backend != "bubblewrap":
            out += [
                "the host's network: UDP, unix sockets and loopback services are reachable "
                "(TCP only where Landlock ABI 4+ refuses it, with known gaps such as MPTCP)",
                "the host's processes: no PID namespace; a process that leaves the session "
                "survives unless a cgroup catches it",
                f"the daemon's uid ({os.geteuid()}): the child runs as the same user",
                "the box is a host directory: no bound on disk or inodes",
            ]
        if self.backend == "bubblewrap" and not self.root:
            out += ["the box's inode count (bwrap's tmpfs takes a size only), and /dev/shm is "
                    "a second tmpfs of the same size"]
        if self.backend == "none":
            out += ["the filesystem: the child can read and write whatever the user can"]
        if not self.tree_limits:
            out += ["memory and processes are bounded per process, not for the whole tree"]
        if not self.seccomp:
            out += ["the kernel's full system call surface (no seccomp filter)"]
        return tuple(out)


def _bwrap_path(limits: SandboxLimits) -> str | None:
    if limits.bwrap_path:
        return limits.bwrap_path if os.access(limits.bwrap_path, os.X_OK) else None
    return shutil.which("bwrap")


def resolve(limits: SandboxLimits = DEFAULT_LIMITS, *, untrusted: bool = False) -> Isolation:
    """The isolation a run with ``limits`` gets here; see ``check_isolation``."""
    abi = landlock_abi()
    common = {"landlock_abi": abi, "cgroups": cgroup_support(),
              "seccomp": program() is not None and sys.platform == "linux"}  # fmt: skip
    problem = "bubblewrap needs Linux"
    if sys.platform == "linux" and limits.isolation != "landlock":
        path = _bwrap_path(limits)
        if path is None:
            problem = f"bubblewrap is not installed ({limits.bwrap_path or 'no bwrap on PATH'})"
        else:
            root = os.geteuid() == 0
            version, problem = _probe_bwrap(path, root)
            if not problem:
                return Isolation("bubblewrap", path, version, root, **common)  # type: ignore[arg-type]
    if limits.isolation == "bubblewrap" or (limits.isolation == "auto" and untrusted):
        raise SandboxUnavailableError(
            f"the sandbox needs bubblewrap for model-written code: {problem}. Install it "
            f"with `{install_hint()}`, or accept the weaker backend explicitly with "
            "`sandbox: {isolation: landlock}` in swarm.yaml"
        )
    if abi > 0:
        return Isolation("landlock", **common)  # type: ignore[arg-type]
    if limits.isolation == "landlock":
        raise SandboxUnavailableError(
            "`sandbox: {isolation: landlock}` needs Landlock (Linux 5.13+, enabled in the "
            f"kernel's LSM list), which this host lacks; install bubblewrap (`{install_hint()}`)"
        )
    return Isolation("none", **common)  # type: ignore[arg-type]


def check_isolation(
    limits: SandboxLimits = DEFAULT_LIMITS, *, untrusted: bool = True
) -> Isolation:
    """Checks at start-up that the sandbox can isolate runs as ``limits`` asks, and
    returns what it will use (``Isolation.describe()`` is a line for the log,
    ``Isolation.gaps`` what it does not isolate).

    ``untrusted`` (the default: model-written code) makes ``isolation: auto`` require
    bubblewrap; pass False for code you trust (the offline demo), where ``auto`` falls
    back to Landlock, then to rlimits alone. Raises ``SandboxUnavailableError`` (a
    ``ConfigError``) with the exact install command when the required backend is
    missing or cannot create a sandbox here (a container without user namespaces, say).
    Probes once per process (about 10 ms).
    """
    return resolve(limits, untrusted=untrusted)
