"""The parent's side of the filesystem: a private base directory, each run's directory,
and removal that never follows a link a hostile process may have planted or swapped in.

Layout: ``$TMPDIR/swarmbus-sandbox-<euid>/`` (mode 0700, ours, checked on every use)
holds one directory per run, ``<daemon pid>-<random>/``, with ``src/`` (the submission
as written by us), ``boot/`` (the child's boot script) and, for the Landlock backend
only, ``box/`` (the child's writable directory). Under bubblewrap the child writes
nothing on the host: its box is a tmpfs inside the sandbox.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path, PurePosixPath

from swarmbus.protocols import SourceFile

from ._errors import SandboxUnavailableError

__all__ = ["RunDir", "check_files", "private_base", "remove_tree", "sweep_stale"]

_RUN_NAME = re.compile(r"^(\d+)-[0-9a-f]{12}$")
_MAX_DEPTH = 32  # deeper directories are moved up to the top, so open fds stay bounded
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def private_base() -> Path:
    """``$TMPDIR/swarmbus-sandbox-<euid>``, created with mode 0700 if missing.

    Raises ``SandboxUnavailableError`` if it exists but is not a real directory owned
    by us and closed to others (someone planted it: we neither use nor remove it).
    """
    base = Path(tempfile.gettempdir()) / f"swarmbus-sandbox-{os.geteuid()}"
    with suppress(FileExistsError):
        os.mkdir(base, 0o700)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise SandboxUnavailableError(
            f"{base} is not a private directory of uid {os.geteuid()} (a link, another "
            f"owner, or open to others): remove it, or point TMPDIR elsewhere"
        )
    return base


class RunDir:
    """One run's directory under the private base; ``close()`` removes it."""

    def __init__(self, base: Path) -> None:
        self.name = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.base = base
        os.mkdir(base / self.name, 0o700)
        self.path = base / self.name
        self.src, self.boot, self.box = self.path / "src", self.path / "boot", self.path / "box"

    def write(self, files: Sequence[SourceFile], hidden: Sequence[SourceFile] = ()) -> None:
        """Writes the submission into ``src/files`` and hidden tests into ``src/hidden``,
        readable by the sandbox's unprivileged uid; creates ``boot`` (and ``box`` for the
        Landlock backend). Raises OSError."""
        for d in (self.src, self.boot, self.box, self.src / "files", self.src / "hidden"):
            os.mkdir(d, 0o755 if d != self.box else 0o700)
        for where, group in (("files", files), ("hidden", hidden)):
            self._write(self.src / where, group)

    @staticmethod
    def _write(top: Path, files: Sequence[SourceFile]) -> None:
        real = top.resolve()
        for f in files:
            target = top / f.path
            if not target.resolve().is_relative_to(real):  # after check_files: defence
                raise OSError(errno.EPERM, f"{f.path!r} escapes the sandbox")
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            with open(target, "w", encoding="utf-8", errors="replace") as fh:
                fh.write(f.content)
            os.chmod(target, 0o644)

    def close(self, *, timeout_s: float = 10.0) -> bool:
        """Removes the run directory; False if time ran out (the next sweep retries)."""
        fd = os.open(self.base, _OPEN_DIR)
        try:
            return remove_tree(fd, self.name, deadline=time.monotonic() + timeout_s)
        finally:
            os.close(fd)


def sweep_stale(base: Path, *, timeout_s: float = 10.0) -> int:
    """Removes run directories whose daemon is gone (SIGKILLed, so it could not clean
    up). Touches only real directories owned by us, named like runs, inside ``base``."""
    removed = 0
    deadline = time.monotonic() + timeout_s
    fd = os.open(base, _OPEN_DIR)
    try:
        with os.scandir(fd) as entries:
            names = [e.name for e in entries]
        for name in names:
            match = _RUN_NAME.match(name)
            if match is None or int(match[1]) == os.getpid() or _alive(int(match[1])):
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                removed += remove_tree(fd, name, deadline=deadline)
    finally:
        os.close(fd)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree(parent_fd: int, name: str, *, deadline: float) -> bool:
    """Removes ``name`` in the directory ``parent_fd`` and everything under it, by file
    descriptor: no path is resolved twice and no link is followed, so a process that
    swaps a directory for a symlink during the walk only gets its symlink removed.
    Directories are made accessible (``chmod 0700`` through an ``O_PATH`` descriptor of
    the very inode); nothing on another filesystem is entered. Returns whether it is gone.
    """
    try:
        top_dev = os.stat(parent_fd).st_dev
        queue = [name]
        while queue:
            _remove_entry(parent_fd, queue.pop(), parent_fd, top_dev, queue, 0, deadline)
    except TimeoutError:
        return False
    try:
        os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _remove_entry(
    dir_fd: int, name: str, top_fd: int, top_dev: int, queue: list[str], depth: int,
    deadline: float,
) -> None:  # fmt: skip
    if time.monotonic() > deadline:
        raise TimeoutError
    try:
        os.unlink(name, dir_fd=dir_fd)  # files, symlinks, FIFOs, sockets: never followed
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except OSError:
        return
    if depth >= _MAX_DEPTH:
        flat = f".flat-{secrets.token_hex(8)}"
        with suppress(OSError):
            os.rename(name, flat, src_dir_fd=dir_fd, dst_dir_fd=top_fd)
            queue.append(flat)
        return
    fd = _open_dir(dir_fd, name)
    if fd is None:
        return
    try:
        if os.fstat(fd).st_dev != top_dev:
            return  # a mount point: not ours to empty
        with os.scandir(fd) as entries:
            names = [e.name for e in entries]
        for child in names:
            _remove_entry(fd, child, top_fd, top_dev, queue, depth + 1, deadline)
    finally:
        os.close(fd)
    with suppress(OSError):
        os.rmdir(name, dir_fd=dir_fd)


def _open_dir(dir_fd: int, name: str) -> int | None:
    """Opens a real directory (not a link to one) readably, fixing its mode first."""
    try:
        path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=dir_fd)  # fmt: skip
    except OSError:
        return None
    try:
        via = f"/proc/self/fd/{path_fd}"  # the inode we hold, whatever the name now means
        with suppress(OSError):
            if stat.S_IMODE(os.stat(path_fd).st_mode) & 0o700 != 0o700:
                os.chmod(via, 0o700)
        return os.open(via, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(path_fd)


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


def check_files(
    files: Sequence[SourceFile], *, max_files: int, max_total_bytes: int
) -> list[str]:
    """What is wrong with a submission's file list (empty when nothing is)."""
    problems: list[str] = []
    if len(files) > max_files:
        problems.append(f"submission: {len(files)} files, the limit is {max_files}")
    size = sum(len(f.content.encode("utf-8", "replace")) for f in files)
    if size > max_total_bytes:
        problems.append(f"submission: {size} bytes, the limit is {max_total_bytes}")
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
