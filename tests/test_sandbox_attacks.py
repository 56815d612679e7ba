"""The attacks that broke the sandbox under a root daemon, and the ones that held, as
tests (the network ones are in test_sandbox_network.py). Each submission's tests assert
that its attack *failed* from the inside; the outer test checks the observable on the
host (a host file unchanged, no process left, a count under its limit; with the limit
lifted, the same submissions count 300 processes and 3 holders of 700 MB)."""

from __future__ import annotations

import os
import platform
import tempfile
import threading
import time
import uuid
from pathlib import Path

import anyio
import pytest
from _sandbox_helpers import BACKENDS, BWRAP, alive_with, needs_bwrap, run

from swarmbus.agents.sandbox import SandboxLimits, SandboxUnavailableError, run_tests
from swarmbus.protocols import SourceFile

pytestmark = pytest.mark.anyio


# -- the whole tree dies ---------------------------------------------------------------------


@pytest.mark.parametrize("limits", BACKENDS)
async def test_a_setsid_exec_survivor_dies_with_the_run(limits: SandboxLimits) -> None:
    marker = f"survivor-{uuid.uuid4().hex}"
    report = await run(
        f"""
        import os, signal, sys, time

        SLEEPER = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "open('alive', 'w').close(); time.sleep(60)")

        def test_escape():
            if os.fork() == 0:  # double fork, a session of its own, an empty environment
                os.setsid()
                if os.fork() == 0:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    os.execve(sys.executable, [sys.executable, "-c", SLEEPER, "{marker}"], {{}})
                os._exit(0)
            deadline = time.monotonic() + 5
            while not os.path.exists("alive") and time.monotonic() < deadline:
                time.sleep(0.02)
            assert os.path.exists("alive")  # it really ran, and the test passes
        """,
        limits=limits,
    )
    assert report.ok, report.output
    assert alive_with(marker) == []  # at once: run_tests waited for the tree to be gone


# -- the parent never follows the child's links ----------------------------------------------


def test_cleanup_does_not_follow_a_link_swapped_in_during_the_walk(tmp_path: Path) -> None:
    """A racing process keeps replacing a directory in a tree with a symlink to a host
    directory while the tree is removed: the host directory keeps its mode and files."""
    from swarmbus.agents.sandbox import remove_tree  # the primitive, raced directly

    victim = tmp_path / "host"
    victim.mkdir(mode=0o755)
    (victim / "keep.txt").write_text("host file")
    os.chmod(victim, 0o755)
    for attempt in range(30):
        tree = tmp_path / f"box{attempt}"
        for i in range(20):
            (tree / f"d{i}" / "sub").mkdir(parents=True)
            (tree / f"d{i}" / "sub" / "f").write_text("x")
            os.chmod(tree / f"d{i}", 0o000)
        stop = threading.Event()

        def swap(tree: Path = tree, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                for i in range(20):
                    link = tree / f"d{i}"
                    try:
                        os.rename(link, tree / f"old{i}")
                        os.symlink(victim, link)
                    except OSError:
                        pass

        swapper = threading.Thread(target=swap)
        swapper.start()
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            remove_tree(fd, tree.name, deadline=time.monotonic() + 10)
        finally:
            stop.set()
            swapper.join()
            os.close(fd)
        assert oct(victim.stat().st_mode & 0o777) == oct(0o755)
        assert (victim / "keep.txt").read_text() == "host file"
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:  # what the swapper left behind
            remove_tree(fd, tree.name, deadline=time.monotonic() + 10)
        finally:
            os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host"]


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of the test's own (where run directories and their base live)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


async def test_stale_sweep_touches_only_our_real_directories(private_tmp: Path) -> None:
    victim = private_tmp / "host"
    victim.mkdir(mode=0o755)
    (victim / "keep.txt").write_text("host file")
    base = private_tmp / f"swarmbus-sandbox-{os.geteuid()}"
    base.mkdir(mode=0o700)
    dead = _dead_pid()
    (base / f"{dead}-aaaaaaaaaaaa").symlink_to(victim)  # a planted link to a host directory
    foreign = base / f"{dead}-bbbbbbbbbbbb"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)  # not ours
    ours = base / f"{dead}-cccccccccccc"
    (ours / "box" / "deep").mkdir(parents=True)
    (ours / "box" / "link").symlink_to(victim)
    os.chmod(ours / "box", 0o000)
    report = await run_tests([SourceFile(path="test_x.py", content="def test_x():\n    pass\n")])
    assert report.ok, report.output
    assert not ours.exists(), "a dead daemon's run directory is swept"
    assert (base / f"{dead}-aaaaaaaaaaaa").is_symlink() and foreign.is_dir()
    assert sorted(os.listdir(victim)) == ["keep.txt"] and victim.stat().st_mode & 0o777 == 0o755


async def test_a_planted_base_directory_is_refused(private_tmp: Path) -> None:
    victim = private_tmp / "host"
    victim.mkdir(mode=0o755)
    (private_tmp / f"swarmbus-sandbox-{os.geteuid()}").symlink_to(victim)
    with pytest.raises(SandboxUnavailableError, match="not a private directory"):
        await run_tests([SourceFile(path="test_x.py", content="def test_x():\n    pass\n")])
    assert os.listdir(victim) == [] and victim.stat().st_mode & 0o777 == 0o755


def _dead_pid() -> int:
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


@pytest.mark.parametrize("limits", BACKENDS)
async def test_a_fifo_or_a_link_as_the_report_changes_nothing(
    limits: SandboxLimits, tmp_path: Path
) -> None:
    # The old parent read box/junit.xml after the run: a FIFO there hung it, a symlink made
    # root read a host file. Reports now come over a pipe, so these are just files; the
    # submission also floods its report pipe and forges a line there.
    canary = tmp_path / "host-secret"
    canary.write_text("HOST-CANARY-" + uuid.uuid4().hex)
    report = await run(
        f"""
        import json, os

        def test_plant():
            box = os.path.dirname(os.getcwd())
            for d in (box, os.getcwd()):
                for name in ("junit.xml", "report.json"):
                    os.mkfifo(os.path.join(d, name + ".fifo"))
                    os.symlink({str(canary)!r}, os.path.join(d, name))
            fds = [int(fd) for fd in os.listdir("/dev/fd") if int(fd) > 2] \\
                if os.path.isdir("/dev/fd") else list(range(3, 20))
            for fd in fds:
                try:
                    os.write(fd, b"x" * 300_000 + b"\\n" + json.dumps({{"passed": 99}}).encode())
                except OSError:
                    pass
        """,
        limits=limits,
    )
    assert report.passed <= 1 and canary.read_text() not in report.output
    start = time.monotonic()
    with anyio.fail_after(1.5 + 3):  # and a cancelled run returns at once
        with anyio.move_on_after(1.5) as scope:
            await run(
                """
                import os, time

                def test_hang():
                    os.mkfifo("junit.xml")
                    time.sleep(60)
                """,
                limits=limits,
            )
    assert scope.cancelled_caught and time.monotonic() - start < 1.5 + 3


# -- what the child can read ---------------------------------------------------------------


@pytest.mark.parametrize("limits", BACKENDS)
async def test_dev_and_private_keys_are_out_of_sight(limits: SandboxLimits) -> None:
    canary = Path("/dev/shm") / f"swarmbus-canary-{uuid.uuid4().hex}"
    canary.write_text("shm canary")
    try:
        assert os.path.isdir("/etc/ssl/private") or os.geteuid() != 0  # the baseline here
        report = await run(
            f"""
            import os, stat, pytest

            def test_host_shm():
                with pytest.raises(OSError):
                    open({str(canary)!r}).read()

            def test_private_keys():
                with pytest.raises(OSError):
                    os.listdir("/etc/ssl/private")

            def test_no_block_devices():
                try:
                    names = os.listdir("/dev")
                except OSError:
                    return  # Landlock: /dev itself is not readable
                for name in names:
                    try:
                        mode = os.stat("/dev/" + name).st_mode
                    except OSError:
                        continue
                    assert not stat.S_ISBLK(mode), name

            def test_own_shm_works():  # multiprocessing needs a writable /dev/shm
                try:
                    open("/dev/shm/probe", "w").close()
                except OSError:
                    pytest.skip("no /dev/shm (Landlock backend)")
                from multiprocessing import Lock
                with Lock():
                    pass
            """,
            limits=limits,
        )
    finally:
        canary.unlink()
    assert report.failed == 0 and report.errors == 0 and report.passed >= 3, report.output
    if limits.isolation == "bubblewrap":
        assert report.passed == 4, report.output


# -- limits on the tree, not the process ----------------------------------------------------


@pytest.mark.parametrize("limits", BACKENDS)
async def test_300_processes_against_a_limit_of_64(limits: SandboxLimits) -> None:
    report = await run(
        """
        import os, time

        def test_fork_300(capsys):
            started = []
            for _ in range(300):
                try:
                    pid = os.fork()
                except OSError:
                    break
                if pid == 0:
                    time.sleep(3)
                    os._exit(0)
                started.append(pid)
            with capsys.disabled():
                print("STARTED", len(started))
            for pid in started:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
        """,
        limits=limits.model_copy(update={"max_processes": 64}),
    )
    started = int(report.output.split("STARTED ", 1)[1].split()[0])
    assert started < 64 and "processes" in report.limits_hit, report.output


@pytest.mark.parametrize("limits", BACKENDS)
async def test_processes_of_700_mb_share_one_memory_limit(limits: SandboxLimits) -> None:
    # Each process stays under the per-process address-space limit (1024 MiB); together
    # they would need 2.1 GB. The cgroup lets at most one hold its 700 MB at a time.
    # A holder keeps its memory until released, so MOST counts holders at the same time.
    report = await run(
        """
        import os, select, time

        def test_three_hoarders(capsys):
            release_r, release_w = os.pipe()
            kids = {}
            for _ in range(3):
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(release_w)
                    hoard = bytearray(700 << 20)
                    for i in range(0, len(hoard), 4096):
                        hoard[i] = 1
                    os.write(w, b"H")
                    os.read(release_r, 1)  # hold until released
                    os._exit(0)
                os.close(w)
                kids[pid] = r
            forked, holding, most = list(kids), set(), 0
            deadline = time.monotonic() + 12  # "memory" in limits_hit proves the OOM acted
            while kids and time.monotonic() < deadline:
                ready = select.select(list(kids.values()), [], [], 0.1)[0]
                for pid, r in list(kids.items()):
                    if r in ready:
                        if os.read(r, 1):
                            holding.add(pid)
                        else:  # died (the OOM killer) before or while holding
                            holding.discard(pid)
                            del kids[pid]
                most = max(most, len(holding))
                if holding and len(holding) == len(kids):
                    break  # every survivor holds its 700 MB: steady state
            os.close(release_w)
            for pid in forked:
                os.waitpid(pid, 0)
            with capsys.disabled():
                print("MOST", most)
        """,
        limits=limits.model_copy(update={"memory_mb": 1024, "timeout_s": 40}),
    )
    most = int(report.output.split("MOST ", 1)[1].split()[0])
    assert most == 1 and "memory" in report.limits_hit, report.output


@needs_bwrap
async def test_disk_and_inodes_of_the_box_are_bounded() -> None:
    report = await run(
        """
        import os, tempfile

        def test_fill_disk(capsys):
            written = 0
            try:
                with open("big", "wb") as fh:
                    while written < 200 << 20:
                        fh.write(b"x" * (1 << 20))
                        written += 1 << 20
                        fh.flush()
            except OSError:
                pass
            with open(os.path.join(tempfile.gettempdir(), "more"), "wb") as fh:
                try:
                    fh.write(b"y" * (40 << 20))
                except OSError:
                    pass
            with capsys.disabled():
                print("DISK", written >> 20)

        def test_fill_inodes(capsys):
            os.remove("big")
            n = 0
            try:
                while n < 100_000:
                    open(f"f{n}", "w").close()
                    n += 1
            except OSError:
                pass
            with capsys.disabled():
                print("INODES", n)
        """,
        limits=BWRAP.model_copy(update={"disk_mb": 32, "max_inodes": 500, "file_size_mb": 64}),
    )
    disk = int(report.output.split("DISK ", 1)[1].split()[0])
    inodes = int(report.output.split("INODES ", 1)[1].split()[0])
    assert disk <= 32 and inodes < 500, report.output


# -- a verdict the submission cannot forge --------------------------------------------------

_FORGERIES = {
    "exit-0-at-import": {"conftest.py": "import os\nos._exit(0)\n"},
    "no-tests-exit-0": {
        "conftest.py": "def pytest_sessionfinish(session):\n    session.exitstatus = 0\n",
    },
    "fake-report-line": {
        "conftest.py": "import json, os\n"
        "line = json.dumps({'passed': 5, 'failed': 0, 'errors': 0, 'exitstatus': 0}) + '\\n'\n"
        "for fd in range(3, 30):\n"
        "    try:\n        os.write(fd, line.encode())\n    except OSError:\n        pass\n"
        "print('5 passed in 0.01s')\nos._exit(0)\n",
    },
    "report-plugin-off": {"pytest.ini": "[pytest]\naddopts = -p no:terminal\n",
                          "conftest.py": "import os\nos._exit(0)\n"},
}


@pytest.mark.parametrize("files", list(_FORGERIES.values()), ids=list(_FORGERIES))
async def test_no_passed_test_is_never_ok(files: dict[str, str]) -> None:
    report = await run_tests([SourceFile(path=p, content=c) for p, c in files.items()])
    assert not report.ok and report.passed == 0, report.output


async def test_a_submitted_module_cannot_shadow_the_runner() -> None:
    shadow = "import os\nprint('SHADOWED')\nos._exit(0)\n"
    report = await run_tests([
        SourceFile(path="pytest.py", content=shadow),
        SourceFile(path="_pytest/__init__.py", content=shadow),
        SourceFile(path="pluggy.py", content=shadow),
        SourceFile(path="json.py", content=shadow),
        SourceFile(path="test_real.py", content="def test_real():\n    assert 1 + 1 == 2\n"),
    ])
    assert report.ok and report.passed == 1, report.output
    assert "SHADOWED" not in report.output


# -- the kernel's surface ---------------------------------------------------------------------


_KEYCTL = {"x86_64": 250, "aarch64": 219}


@needs_bwrap
@pytest.mark.skipif(platform.machine() not in _KEYCTL, reason="syscall numbers for x86_64/aarch64")
async def test_no_capability_no_new_namespace_no_io_uring() -> None:
    import ctypes

    if Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "0":
        params = ctypes.create_string_buffer(120)
        fd = ctypes.CDLL(None, use_errno=True).syscall(425, 1, params)
        assert fd >= 0, "io_uring works on this host: the baseline"
        os.close(fd)
    report = await run(
        f"""
        import ctypes, os

        libc = ctypes.CDLL(None, use_errno=True)

        def test_no_capabilities():  # capget, and the bounding set through prctl
            header = ctypes.create_string_buffer(b"\\x22\\x05\\x08\\x20" + bytes(4))
            data = ctypes.create_string_buffer(24)
            assert libc.capget(header, data) == 0
            assert data.raw == bytes(24)  # effective, permitted, inheritable: empty
            assert all(libc.prctl(23, cap, 0, 0, 0) != 1 for cap in range(41))

        def test_unprivileged_uid():
            assert os.geteuid() == 65534 and os.getegid() == 65534

        def test_no_new_namespace():
            assert libc.unshare(0x10000000) == -1  # CLONE_NEWUSER
            assert libc.unshare(0x40000000) == -1  # CLONE_NEWNET

        def test_no_io_uring():
            assert libc.syscall(425, 1, ctypes.create_string_buffer(120)) == -1

        def test_no_keyring():
            assert libc.syscall({_KEYCTL[platform.machine()]}, 0, -3, 0) == -1
        """,
        limits=BWRAP,
    )
    assert report.ok and report.passed == 5, report.output
