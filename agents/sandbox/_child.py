"""The sandbox's first process: it locks itself down, then runs pytest in-process.

Copied into each run's boot directory and started as ``python -I -u child.py CONFIG``
(under bubblewrap, or directly for the Landlock backend), so it imports nothing but the
standard library until pytest, and nothing submitted runs before it is done:

1. read the acceptance token from its pipe (if any) and close it;
2. as root under bubblewrap: mount the box (a tmpfs with a size and an inode limit),
   bind its ``shm`` over ``/dev/shm``, empty the capability bounding set, and become the
   unprivileged sandbox uid (which clears every capability); as root without
   bubblewrap: empty the bounding set and clear every capability, staying uid 0;
3. copy the submission into the box, set rlimits, apply Landlock (files, TCP, signals
   and abstract unix sockets) and the seccomp filter, ask for SIGKILL if the parent
   dies (Landlock backend), then run pytest with the harness plugin.

Landlock is applied with the few ctypes calls below rather than a binding: the
``landlock`` package (1.0.0.dev5) has no network or scope rules and decides failure
from errno instead of the return value; ``py-landlock`` (0.1.1, alpha, one author)
rejects a read rule on a single file through its high-level API. These calls run on
every sandboxed test run, so the tests cover them.

The harness counts outcomes from pytest's hooks and writes one JSON line to the report
pipe when the session ends, carrying the run's random token, which the parent handed
over on a pipe read (and closed) before anything submitted was imported. A line
without the token is not believed, so an early ``os._exit(0)``, a fake line on the
report pipe or a printed fake summary count for nothing. Counts are still produced in
the process that runs submitted code: code that introspects this process (finds the
token in memory, patches pytest) can forge them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import struct
import sys
from typing import Any, NoReturn

Config = dict[str, Any]
MB = 1 << 20
MS_NOSUID, MS_NODEV, MS_BIND = 0x2, 0x4, 0x1000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 24, 38, 22
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER = 47, 4, 2
LL_CREATE, LL_ADD_RULE, LL_RESTRICT = 444, 445, 446

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


STATUS_FD = -1


def fail(message: str, code: int = 97) -> NoReturn:
    text = ("[sandbox] setup failed: " + message + "\n").encode()
    try:
        os.write(STATUS_FD, text)
    except OSError:
        sys.stderr.buffer.write(text)
    os._exit(code)


def check(result: int, what: str) -> None:
    if result < 0:
        fail(f"{what}: {os.strerror(ctypes.get_errno())}")


def drop_bounding_set() -> None:
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            break  # EINVAL past the last capability this kernel knows
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def clear_capabilities() -> None:
    header = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0), 8)
    data = ctypes.create_string_buffer(24)  # effective, permitted, inheritable: all zero
    check(libc.capset(header, data), "capset")


def mount_box(cfg: Config) -> None:
    box, uid = cfg["box"], cfg["uid"]
    opts = f"size={cfg['disk_mb'] * MB},nr_inodes={cfg['max_inodes']},mode=0700"
    check(libc.mount(b"tmpfs", box.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode()),
          "mount the box")
    for name in ("tmp", "shm"):
        os.mkdir(os.path.join(box, name), 0o700)
        os.chown(os.path.join(box, name), uid, uid)
    check(libc.mount(os.path.join(box, "shm").encode(), b"/dev/shm", None, MS_BIND, None),
          "bind /dev/shm")
    os.chown(box, uid, uid)  # last: root keeps no capability to enter it afterwards


def become(uid: int) -> None:
    drop_bounding_set()
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # no capability survives a change away from uid 0
    clear_capabilities()
    if os.getuid() != uid or os.geteuid() != uid:
        fail(f"could not become uid {uid}")


def prepare_box(cfg: Config) -> None:
    box = cfg["box"]
    for name in ("work", "home", "tmp"):
        os.makedirs(os.path.join(box, name), exist_ok=True)
    shutil.copytree(cfg["src"], cfg["work"], symlinks=True, dirs_exist_ok=True)


def clamp(res: int, soft: int, hard: int | None = None) -> None:
    hard = soft if hard is None else hard
    cur = resource.getrlimit(res)[1]
    if cur != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur), min(hard, cur)
    resource.setrlimit(res, (soft, hard))


def tasks_of(uid: int) -> int:  # RLIMIT_NPROC counts every task of the user, not just ours
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat("/proc/" + pid).st_uid == uid:
                n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return n


def set_rlimits(cfg: Config) -> None:
    clamp(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
    clamp(resource.RLIMIT_AS, cfg["memory_mb"] * MB)
    clamp(resource.RLIMIT_FSIZE, cfg["file_size_mb"] * MB)
    clamp(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    clamp(resource.RLIMIT_CORE, 0)
    if cfg["nproc"] and os.geteuid() != 0:  # only without a pids cgroup; root ignores it
        clamp(resource.RLIMIT_NPROC, tasks_of(os.getuid()) + cfg["max_processes"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversize writes fail with EFBIG instead


def landlock(cfg: Config) -> str | None:
    """Returns None when applied, else why not."""
    abi = libc.syscall(LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return "Landlock unavailable: " + os.strerror(ctypes.get_errno())
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)
    fs |= 1 << 15 if abi >= 5 else 0
    read, file_rights = 1 | 4 | 8, 1 | 2 | 4 | 1 << 14 | 1 << 15
    net = 3 if abi >= 4 and not cfg["allow_network"] else 0
    scoped = 3 if abi >= 6 else 0  # abstract unix sockets and signals stay inside
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", fs, net, scoped)[:size], size)
    rs = libc.syscall(LL_CREATE, attr, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if rs < 0:
        return "landlock_create_ruleset: " + os.strerror(ctypes.get_errno())

    def allow(path: str, access: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            is_dir = os.path.isdir(f"/proc/self/fd/{fd}") if os.path.isdir("/proc") else \
                os.path.isdir(path)
            access &= fs if is_dir else fs & file_rights
            rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
            if libc.syscall(LL_ADD_RULE, ctypes.c_int(rs), ctypes.c_int(1), rule,
                            ctypes.c_uint32(0)):
                raise OSError(ctypes.get_errno(), "landlock_add_rule", path)
        finally:
            os.close(fd)

    try:
        for path in cfg["reads"]:
            allow(path, read)
        for path in cfg["devices"]:
            allow(path, read | 2 | 1 << 14)
        for path in cfg["writes"]:
            allow(path, fs)
    except OSError as exc:
        return str(exc)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if libc.syscall(LL_RESTRICT, ctypes.c_int(rs), ctypes.c_uint32(0)):
        return "landlock_restrict_self: " + os.strerror(ctypes.get_errno())
    os.close(rs)
    return None


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp(program: bytes) -> None:
    buf = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def read_token(fd: int | None) -> str | None:
    if fd is None:
        return None
    data = b""
    while len(data) < 256:
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data.decode().strip()


def run_pytest(cfg: Config, token: str | None) -> NoReturn:
    report_fd = cfg["report_fd"]
    os.set_inheritable(report_fd, False)  # children of the tests do not get it
    sys.dont_write_bytecode = True
    import pytest

    for path in cfg["pythonpath"]:
        sys.path.append(path)  # after the stdlib and pytest: nothing submitted shadows them

    class Harness:
        def __init__(self) -> None:
            self.outcome: dict[str, str] = {}
            self.names: list[str] = []

        def note(self, nodeid: str, outcome: str) -> None:
            rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
            if rank[outcome] >= rank.get(self.outcome.get(nodeid, "passed"), 0):
                self.outcome[nodeid] = outcome
            if outcome in ("failed", "error") and nodeid not in self.names:
                self.names.append(nodeid)

        def pytest_collectreport(self, report: pytest.CollectReport) -> None:
            if report.failed:
                self.note(report.nodeid or "<collection>", "error")

        def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
            if report.when == "call":
                self.note(report.nodeid, "failed" if report.failed else
                          "skipped" if report.skipped else "passed")
            elif report.failed:
                self.note(report.nodeid, "error")
            elif report.skipped:
                self.note(report.nodeid, "skipped")

        @pytest.hookimpl(trylast=True)
        def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
            counts = {k: 0 for k in ("passed", "failed", "error", "skipped")}
            for outcome in self.outcome.values():
                counts[outcome] += 1
            doc: dict[str, Any] = {"passed": counts["passed"], "failed": counts["failed"],
                   "errors": counts["error"], "skipped": counts["skipped"],
                   "failed_tests": self.names[:200], "exitstatus": int(exitstatus),
                   "token": token}  # only now, once every collected test has run
            data = (json.dumps(doc) + "\n").encode()
            with contextlib.suppress(OSError):
                while data:
                    data = data[os.write(report_fd, data):]

    code = pytest.main(cfg["pytest_args"], plugins=[Harness()])
    sys.stdout.flush()
    sys.exit(int(code))


def close_strays(keep: set[int]) -> None:
    """Only the pipes meant for us stay open (bwrap's info pipe, say, does not)."""
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def main() -> None:
    global STATUS_FD
    cfg = json.loads(sys.argv[1])
    STATUS_FD = cfg["status_fd"]
    close_strays({cfg["token_fd"], cfg["status_fd"], cfg["report_fd"]})
    token = read_token(cfg["token_fd"])
    if cfg["mount_box"]:
        mount_box(cfg)
    if cfg["uid"] is not None and os.getuid() == 0:
        become(cfg["uid"])
    elif os.geteuid() == 0:
        drop_bounding_set()
        clear_capabilities()
    prepare_box(cfg)
    set_rlimits(cfg)
    problem = landlock(cfg)
    if problem:
        if cfg["require_landlock"]:
            fail("refusing to run without Landlock: " + problem)
        sys.stderr.write(f"[sandbox] {problem}; Landlock is not applied\n")
    if cfg["seccomp"]:
        seccomp(bytes.fromhex(cfg["seccomp"]))
    if cfg["parent"]:  # die with the reviewer: a SIGKILLed daemon leaves no orphan
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != cfg["parent"]:
            os._exit(4)
    os.chdir(cfg["work"])
    os.write(STATUS_FD, b"ready\n")  # from here on, whatever happens is the submission's
    os.close(STATUS_FD)
    run_pytest(cfg, token)


if __name__ == "__main__":
    main()
