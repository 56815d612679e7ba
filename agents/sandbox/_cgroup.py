"""Tree-wide limits with cgroups: one memory cgroup and one pids cgroup per run.

A run's cgroups are children of the daemon's own (so a host or container limit on the
daemon still applies on top). cgroup v1 (a hierarchy per controller) works when we may
create children there, which root may; cgroup v2 works when the controllers are already
enabled for our subtree (systemd ``Delegate=yes``, or a container's own namespace), since
a cgroup with processes in it cannot enable them for its children itself. Memory counts
everything the tree charges: anonymous memory, page cache and tmpfs pages (the box).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["RunCgroup", "cgroup_support", "sweep_stale_cgroups"]

_CONTROLLERS = ("memory", "pids")


@dataclass(frozen=True)
class _Parent:
    controller: str
    version: int  # 1 or 2
    path: Path  # the daemon's own cgroup in that hierarchy


@cache
def _parents() -> tuple[_Parent, ...]:
    """Where each controller lets us create child cgroups (probed once per process)."""
    if not Path("/proc/self/cgroup").exists():
        return ()
    mine: dict[str, str] = {}  # controller (or "" for v2) -> our path in that hierarchy
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hier, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if hier != "0" else [""]:
            mine[c] = path
    found: dict[str, _Parent] = {}
    for mount_root, mountpoint, fstype, options in _mounts():
        if fstype == "cgroup":
            for c in _CONTROLLERS:
                if c in options.split(",") and c in mine and c not in found:
                    v1 = _join(mountpoint, mount_root, mine[c])
                    if v1 is not None:
                        found[c] = _Parent(c, 1, v1)
        elif fstype == "cgroup2" and "" in mine:
            v2 = _join(mountpoint, mount_root, mine[""])
            if v2 is None:
                continue
            with suppress(OSError):
                enabled = (v2 / "cgroup.subtree_control").read_text().split()
                for c in _CONTROLLERS:
                    if c in enabled and c not in found:
                        found[c] = _Parent(c, 2, v2)
    usable = []
    for parent in found.values():
        probe = parent.path / f"swarmbus-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            continue
        usable.append(parent)
    return tuple(usable)


def _mounts() -> Iterator[tuple[str, str, str, str]]:
    """(root within the filesystem, mount point, type, super options) of each mount."""
    with suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 3:
                yield fields[3], fields[4].replace("\\040", " "), tail[0], tail[2]


def _join(mountpoint: str, mount_root: str, path: str) -> Path | None:
    rel = os.path.relpath(path, mount_root)
    if rel.startswith(".."):
        return None  # our cgroup is outside what this mount shows
    return Path(mountpoint) / rel if rel != "." else Path(mountpoint)


def cgroup_support() -> str:
    """A short description of the tree limits this host allows, e.g. ``cgroup v1
    (memory, pids)``, or ``no cgroup`` when none can be created."""
    parents = _parents()
    if not parents:
        return "no cgroup"
    versions = sorted({p.version for p in parents})
    names = ", ".join(p.controller for p in parents)
    return f"cgroup v{'+v'.join(map(str, versions))} ({names})"


class RunCgroup:
    """The cgroups of one run. Create with ``RunCgroup.create``; the launcher writes
    ``0`` into each of ``procs`` to join before it starts the sandbox."""

    def __init__(self, dirs: dict[str, tuple[int, Path]]) -> None:
        self.dirs = dirs  # controller -> (version, directory)

    @classmethod
    def create(cls, name: str, *, memory_bytes: int, max_tasks: int) -> RunCgroup:
        dirs: dict[str, tuple[int, Path]] = {}
        made: list[Path] = []
        try:
            for parent in _parents():
                d = parent.path / name
                if d not in made:
                    d.mkdir()
                    made.append(d)
                dirs[parent.controller] = (parent.version, d)
                if parent.controller == "pids":
                    (d / "pids.max").write_text(str(max_tasks))
                elif parent.version == 1:
                    (d / "memory.limit_in_bytes").write_text(str(memory_bytes))
                    with suppress(OSError):  # absent without swap accounting
                        (d / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                else:
                    (d / "memory.max").write_text(str(memory_bytes))
                    with suppress(OSError):
                        (d / "memory.swap.max").write_text("0")
        except OSError:
            cg = cls(dirs)
            cg.remove()
            raise
        return cls(dirs)

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(self.dirs)

    @property
    def procs(self) -> list[str]:
        return sorted({str(d / "cgroup.procs") for _, d in self.dirs.values()})

    def pids(self) -> set[int]:
        out: set[int] = set()
        for _, d in self.dirs.values():
            with suppress(OSError):
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return out

    def kill(self) -> int:
        """SIGKILLs every process in the run's cgroups; returns how many were left."""
        for version, d in self.dirs.values():
            if version == 2:
                with suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
        pids = self.pids()
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def limits_hit(self) -> list[str]:
        """Which tree limits the run ran into: ``memory`` (an allocation failed or the
        OOM killer acted inside the cgroup), ``processes`` (a fork was refused)."""
        hit: list[str] = []
        for controller, (version, d) in self.dirs.items():
            with suppress(OSError, ValueError):
                if controller == "pids":
                    events = dict(line.split() for line in (d / "pids.events").read_text()
                                  .splitlines())  # fmt: skip
                    if int(events.get("max", 0)):
                        hit.append("processes")
                elif version == 1:
                    oom = dict(line.split() for line in (d / "memory.oom_control").read_text()
                               .splitlines())  # fmt: skip
                    if int(oom.get("oom_kill", 0)):
                        hit.append("memory")
                else:
                    events = dict(line.split() for line in (d / "memory.events").read_text()
                                  .splitlines())  # fmt: skip
                    if int(events.get("oom_kill", 0)) or int(events.get("max", 0)):
                        hit.append("memory")
        return hit

    def remove(self) -> bool:
        """Removes the (empty) cgroups; False if a process is still in one."""
        ok = True
        for _, d in {d: (v, d) for v, d in self.dirs.values()}.values():
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                ok = False
        return ok


def sweep_stale_cgroups(prefix: str = "swarmbus-") -> None:
    """Removes empty run cgroups left by a daemon that was SIGKILLed."""
    for parent in _parents():
        with suppress(OSError):
            for child in parent.path.iterdir():
                name = child.name
                owner = name[len(prefix):].split("-", 1)[0] if name.startswith(prefix) else ""
                if owner.isdigit() and int(owner) != os.getpid() and not _alive(int(owner)):
                    with suppress(OSError):
                        child.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
