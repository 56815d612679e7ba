"""The executable-review sandbox: limits, secrets, truncation, escapes (issues 4 and 5).

These run with ``isolation: auto`` (bubblewrap where it works, as in CI); the attacks
of the root-daemon issue are in test_sandbox_attacks.py, acceptance runs in
test_sandbox_acceptance.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pydantic
import pytest
from _sandbox_helpers import BACKENDS, BWRAP, marker, needs_bwrap, run

from swarmbus.agents.sandbox import (
    SandboxLimits,
    SandboxUnavailableError,
    check_isolation,
    describe_isolation,
    install_hint,
    landlock_abi,
    run_tests,
)
from swarmbus.protocols import ConfigError, SourceFile

pytestmark = pytest.mark.anyio
__all__ = ["marker"]  # a fixture, imported for its tests

FAST = SandboxLimits(timeout_s=20)


async def test_passing_suite_is_counted() -> None:
    report = await run_tests(
        [
            SourceFile(path="calc.py", content="def add(a, b):\n    return a + b\n"),
            SourceFile(
                path="tests/test_calc.py",
                content="from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n\n"
                "def test_tmp(tmp_path):\n    (tmp_path / 'x').write_text('ok')\n",
            ),
        ],
        limits=FAST,
    )
    assert (report.passed, report.failed, report.errors) == (2, 0, 0), report.output
    assert report.exit_code == 0 and report.ok and not report.timed_out and not report.truncated


async def test_failures_are_reported_with_test_names() -> None:
    report = await run(
        """
        import pytest

        def test_good():
            pass

        def test_bad():
            assert 1 == 2

        class TestGroup:
            @pytest.mark.parametrize("n", [1, 2])
            def test_param(self, n):
                assert n == 1
        """,
        path="pkg/test_names.py",
    )
    assert (report.passed, report.failed, report.errors) == (2, 2, 0)
    assert report.failed_tests == [
        "pkg/test_names.py::test_bad",
        "pkg/test_names.py::TestGroup::test_param[2]",
    ]
    assert report.exit_code == 1 and not report.ok
    assert "assert 1 == 2" in report.output


async def test_collection_error_counts_as_error() -> None:
    report = await run("def test_x(:\n    pass\n", path="test_broken.py")
    assert report.errors == 1 and report.passed == 0 and not report.ok
    assert report.failed_tests and "test_broken" in report.failed_tests[0]
    assert "SyntaxError" in report.output


async def test_submission_without_tests_says_so() -> None:
    report = await run("def helper():\n    return 1\n", path="lib.py")
    assert report.exit_code == 5 and not report.ok
    assert "no tests were collected" in report.output


async def test_infinite_loop_is_killed_at_the_timeout() -> None:
    start = time.monotonic()
    report = await run(
        "def test_spin():\n    while True:\n        pass\n", limits=SandboxLimits(timeout_s=2.5)
    )
    assert report.timed_out and not report.ok
    assert report.exit_code is not None and report.exit_code < 0
    assert time.monotonic() - start < 2.5 + 3
    assert "timed out after 2.5s" in report.output
    assert "test_spin" in report.output  # faulthandler dumped the stuck test before the kill


async def test_cpu_limit_kills_a_busy_child() -> None:
    report = await run(
        "def test_spin():\n    while True:\n        pass\n",
        limits=SandboxLimits(timeout_s=20, cpu_s=1),
    )
    assert not report.timed_out and not report.ok
    assert report.exit_code is not None and report.exit_code < 0
    assert "killed by SIG" in report.output


async def test_memory_bomb_is_contained() -> None:
    report = await run(
        """
        def test_bomb():
            hoard = []
            while True:
                hoard.append(bytearray(32 << 20))
        """,
        limits=SandboxLimits(timeout_s=20, memory_mb=256),
    )
    assert report.failed_tests == ["test_sub.py::test_bomb"]
    assert "MemoryError" in report.output and not report.timed_out
    assert len(bytearray(64 << 20)) == 64 << 20  # the parent is unaffected


async def test_file_size_limit_fails_the_write_not_the_run() -> None:
    report = await run(
        "def test_big():\n    open('big.bin', 'wb').write(b'x' * (3 << 20))\n",
        limits=SandboxLimits(timeout_s=20, file_size_mb=1),
    )
    assert report.failed_tests == ["test_sub.py::test_big"]
    assert "File too large" in report.output and report.exit_code == 1


@pytest.mark.parametrize("ending", ["timeout", "exit"])
async def test_descendants_die_with_the_run(ending: str, marker: str) -> None:
    # One grandchild stays in the group, one leaves it with setsid, and a few forked
    # processes leave it too; all must be gone when run_tests returns.
    report = await run(
        f"""
        import os, subprocess, sys, time

        def test_spawn():
            sleeper = [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"]
            subprocess.Popen(sleeper)
            subprocess.Popen(sleeper, start_new_session=True)
            for _ in range(5):
                if os.fork() == 0:
                    os.setsid()
                    os.execv(sys.executable, sleeper)
            time.sleep(0.3)
            if "{ending}" == "timeout":
                time.sleep(60)
        """,
        limits=SandboxLimits(timeout_s=2),
    )
    assert report.timed_out is (ending == "timeout")
    if ending == "exit":
        assert report.passed == 1, report.output


async def test_cancelling_the_caller_kills_the_tree(marker: str) -> None:
    source = f"""
        import subprocess, sys, time

        def test_wait():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
            time.sleep(60)
        """
    with anyio.move_on_after(1.5) as scope:
        await run(source)
    assert scope.cancelled_caught


async def test_child_environment_has_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    canaries = {
        "OPENAI_API_KEY": "sk-canary-openai",
        "ANTHROPIC_API_KEY": "sk-ant-canary",
        "GEMINI_API_KEY": "canary-gemini",
        "NATS_PASSWORD": "canary-nats-password",
        "NATS_TOKEN": "canary-nats-token",
        "NATS_CREDS": "/canary/nats.creds",
        "AWS_SECRET_ACCESS_KEY": "canary-aws",
        "GITHUB_TOKEN": "canary-github",
    }
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    report = await run(
        """
        import os

        def test_dump_env():
            for name, value in sorted(os.environ.items()):
                print(f"ENV {name}={value}")
            assert False, "show the captured environment"
        """
    )
    assert report.failed_tests == ["test_sub.py::test_dump_env"]
    assert "ENV HOME=" in report.output and "ENV PATH=" in report.output
    for name, value in canaries.items():
        assert name not in report.output
        assert value not in report.output
    home = report.output.split("ENV HOME=", 1)[1].split()[0]
    assert home != os.environ.get("HOME") and (home == "/box/home" or "swarmbus-" in home)


@pytest.mark.parametrize("limits", BACKENDS)
async def test_child_cannot_read_the_host(limits: SandboxLimits, tmp_path: Path) -> None:
    # Landlock refuses (PermissionError); under bubblewrap the paths are not there at all,
    # or /proc/1 is the sandbox's own init, owned by another uid.
    secret = tmp_path / "secret.env"
    secret.write_text("OPENAI_API_KEY=sk-canary-file\n")
    project = Path(__file__).resolve().parent / "conftest.py"
    report = await run(
        f"""
        import os, pytest

        @pytest.mark.parametrize("path", [
            "{secret}", "/proc/{os.getpid()}/environ", "/proc/1/environ",
            "/proc/{os.getpid()}/cmdline", "/root/.bashrc", "{project}",
        ])
        def test_read(path):
            with pytest.raises(OSError):
                open(path, "rb").read()
        """,
        limits=limits,
    )
    assert report.passed == 6 and report.ok, report.output
    assert "sk-canary-file" not in report.output


_WRITES = [
    "open(TARGET, 'w').write('x')",
    "os.close(os.open(TARGET, os.O_WRONLY | os.O_CREAT))",
    "shutil.copyfile(__file__, TARGET)",
    "os.symlink(TARGET, 'link'); open('link', 'w').write('x')",
    "open('moved', 'w').write('x'); os.rename('moved', TARGET)",
    "os.link(VICTIM, 'hard'); open('hard', 'w').write('x')",
    "open(VICTIM, 'a').write('x')",
    "os.truncate(VICTIM, 0)",
    "os.remove(VICTIM)",
    "subprocess.run(['sh', '-c', 'echo x > ' + TARGET]); assert os.path.exists(TARGET)",
    "assert ctypes.CDLL(None).creat(TARGET.encode(), 0o644) >= 0",
    "subprocess.run([sys.executable, '-I', '-c', f'open({TARGET!r}, \"w\")'], check=True)",
]


@pytest.mark.parametrize("limits", BACKENDS)
async def test_nothing_writes_outside_the_sandbox(limits: SandboxLimits, tmp_path: Path) -> None:
    # Python, libc through ctypes, a shell and a fresh interpreter: the kernel refuses
    # them all (Landlock), or the host path is not in the sandbox's view at all.
    target, victim = tmp_path / "pwned", tmp_path / "victim.txt"
    victim.write_text("original")
    tests = "\n".join(
        f"def test_escape_{i}():\n    {attempt}\n" for i, attempt in enumerate(_WRITES)
    )
    report = await run(
        "import ctypes, os, shutil, subprocess, sys\n"
        f"TARGET, VICTIM = {str(target)!r}, {str(victim)!r}\n\n{tests}",
        limits=limits,
    )
    assert report.failed == len(_WRITES) and report.passed == 0, report.output
    assert not target.exists() and victim.read_text() == "original"


async def test_network_is_refused_unless_allowed() -> None:
    # Refused by Landlock (ABI 4+) or unreachable from bubblewrap's network namespace.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        source = f"""
            import socket

            def test_connect():
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            """
        refused = await run(source)
        allowed = await run(source, limits=SandboxLimits(timeout_s=20, allow_network=True))
    assert refused.failed == 1 and ("PermissionError" in refused.output
                                    or "ConnectionRefusedError" in refused.output)
    assert allowed.ok, allowed.output


@pytest.mark.parametrize("limits", BACKENDS)
async def test_child_cannot_signal_the_host(limits: SandboxLimits) -> None:
    if limits.isolation == "landlock" and landlock_abi() < 6:
        pytest.skip("Landlock signal scoping needs ABI 6")
    report = await run(
        f"""
        import os, pytest

        def test_signal_parent():
            # a probe: even a harmless signal is refused (Landlock), or the pid is not
            # in the sandbox's PID namespace at all (bubblewrap)
            with pytest.raises((PermissionError, ProcessLookupError)):
                os.kill({os.getpid()}, 0)
        """,
        limits=limits,
    )
    assert report.ok, report.output


async def test_huge_output_is_truncated_head_and_tail() -> None:
    report = await run(
        """
        def test_noisy():
            print("FIRST-LINE")
            for i in range(200_000):
                print("noise", i)
            print("LAST-LINE")
            assert False
        """,
        limits=SandboxLimits(timeout_s=20, max_output_bytes=4096),
    )
    assert report.truncated and report.failed == 1
    assert len(report.output.encode()) < 4096 + 500
    assert "bytes of output truncated" in report.output
    assert "FIRST-LINE" in report.output  # the head is kept
    assert "LAST-LINE" in report.output and "1 failed" in report.output  # and the tail


@pytest.mark.parametrize(
    "path", ["../x.py", "/etc/x.py", "a/../../x.py", "", "a\\..\\x.py", "ok/../../../tmp/x.py"]
)
async def test_unsafe_paths_are_rejected_before_running(path: str) -> None:
    report = await run_tests(
        [
            SourceFile(path="test_ok.py", content="def test_ok():\n    pass\n"),
            SourceFile(path=path, content="x = 1\n"),
        ]
    )
    assert report.errors == 1 and report.exit_code is None and not report.ok
    assert "rejected" in report.output and "nothing was run" in report.output


async def test_oversized_submission_is_rejected() -> None:
    files = [SourceFile(path=f"m{i}.py", content="") for i in range(3)]
    report = await run_tests(files, limits=SandboxLimits(max_files=2))
    assert report.errors == 1 and "limit is 2" in report.output
    dupes = [SourceFile(path="a.py", content=""), SourceFile(path="./a.py", content="")]
    assert "duplicate" in (await run_tests(dupes)).output


def test_limits_are_validated() -> None:
    with pytest.raises(pydantic.ValidationError):
        SandboxLimits(timeout_s=0)
    with pytest.raises(pydantic.ValidationError):
        SandboxLimits(memroy_mb=10)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match="must fit in the box"):
        SandboxLimits(disk_mb=8, max_total_bytes=9 << 20)
    with pytest.raises(pydantic.ValidationError):
        SandboxLimits(isolation="docker")


_ORPHAN_DRIVER = """
import sys, anyio
from swarmbus.agents.sandbox import SandboxLimits, run_tests
from swarmbus.protocols import SourceFile
test = "import time\\n\\ndef test_sleeps():\\n    print('SANDBOX-STARTED', flush=True)\\n" \\
       "    time.sleep(120)\\n"
anyio.run(lambda: run_tests([SourceFile(path="test_s.py", content=test)],
                            limits=SandboxLimits(timeout_s=100, isolation=sys.argv[1])))
"""


@pytest.mark.slow
@pytest.mark.parametrize("limits", BACKENDS)
async def test_sigkilled_owner_leaves_no_orphan_and_its_dir_is_swept(
    limits: SandboxLimits, tmp_path: Path
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    base = tmp_path / f"swarmbus-sandbox-{os.geteuid()}"
    owner = subprocess.Popen([sys.executable, "-c", _ORPHAN_DRIVER, limits.isolation], env=env)
    try:
        with anyio.fail_after(30):
            while not list(base.glob(f"{owner.pid}-*")) or not any(
                b"child.py" in _cmdline(pid) for pid in _tree(owner.pid)
            ):
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)
        tree = _tree(owner.pid)  # bwrap, the sandbox's init and the child; or the child
        owner.kill()
        owner.wait()
        with anyio.fail_after(10):  # the sandbox dies with its owner
            while any(_exists(pid) for pid in tree):
                await anyio.sleep(0.05)
    finally:
        if owner.poll() is None:
            owner.kill()
    stale = list(base.glob(f"{owner.pid}-*"))
    assert stale, "a SIGKILLed owner cannot remove its sandbox directory"
    proc = subprocess.run(
        [sys.executable, "-c", "import anyio\nfrom swarmbus.agents.sandbox import run_tests\n"
         "anyio.run(run_tests, [])"],
        env=env, check=True, timeout=60,
    )
    assert proc.returncode == 0
    assert not any(p.exists() for p in stale), "the next sandbox run sweeps dead owners' dirs"


def _tree(owner: int) -> list[int]:
    """Every descendant of ``owner`` (bwrap, the sandbox's init, the interpreter...)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
    out, todo = [], [owner]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _exists(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- which isolation, and refusing to start without the one required --------------------------

MISSING = "/nonexistent/bwrap"


def test_untrusted_code_requires_bubblewrap_with_the_install_command() -> None:
    for limits in (SandboxLimits(bwrap_path=MISSING),
                   SandboxLimits(isolation="bubblewrap", bwrap_path=MISSING)):
        with pytest.raises(SandboxUnavailableError) as caught:
            check_isolation(limits)
        assert install_hint() in str(caught.value) and "isolation: landlock" in str(caught.value)
        assert isinstance(caught.value, ConfigError)
    assert "bubblewrap" in install_hint()


@pytest.mark.skipif(landlock_abi() < 1, reason="kernel without Landlock")
def test_the_weaker_backend_says_what_it_does_not_isolate() -> None:
    explicit = check_isolation(SandboxLimits(isolation="landlock"))
    trusted = check_isolation(SandboxLimits(bwrap_path=MISSING), untrusted=False)
    for iso in (explicit, trusted):
        assert iso.backend == "landlock" and iso.describe().startswith("Landlock only (weaker)")
        assert any("network" in gap for gap in iso.gaps)
        assert any("PID namespace" in gap for gap in iso.gaps)


async def test_a_missing_required_backend_is_a_config_error_not_a_report() -> None:
    with pytest.raises(SandboxUnavailableError):
        await run_tests([SourceFile(path="test_x.py", content="def test_x():\n    pass\n")],
                        limits=SandboxLimits(isolation="bubblewrap", bwrap_path=MISSING))


@needs_bwrap
async def test_the_report_names_the_isolation() -> None:
    iso = check_isolation(BWRAP)
    assert iso.backend == "bubblewrap" and not iso.gaps, iso.gaps
    assert describe_isolation(BWRAP).startswith("bubblewrap ")
    report = await run("def test_x():\n    pass\n", limits=BWRAP)
    assert report.ok and report.isolation == iso.describe() and report.self_reported
    assert report.output.endswith(f"[sandbox] isolation: {iso.describe()}")


def test_the_public_surface() -> None:
    import swarmbus.agents.sandbox as pkg

    assert isinstance(pkg.__all__, tuple) and len(set(pkg.__all__)) == len(pkg.__all__)
    public = {n for n, v in vars(pkg).items() if not n.startswith("_")
              and not isinstance(v, type(pkg))}  # fmt: skip
    assert public == set(pkg.__all__)


def test_the_readme_sandbox_block_is_valid() -> None:
    import re

    import yaml

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
                 if b.startswith("sandbox:"))  # fmt: skip
    assert SandboxLimits(**yaml.safe_load(block)["sandbox"]) == SandboxLimits()
