"""Shared by the sandbox tests: running a submission, finding its processes, and which
isolation this host offers (so a test that needs bubblewrap says why it skips)."""

from __future__ import annotations

import functools
import os
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmbus.agents.sandbox import (
    SandboxLimits,
    SandboxUnavailableError,
    check_isolation,
    run_tests,
)
from swarmbus.protocols import SourceFile, TestReport

REQUIRE_BUBBLEWRAP = "REQUIRE_BUBBLEWRAP"
"""Set to 1 (``.ci/run`` does), a test marked ``bubblewrap`` that cannot run here fails
instead of skipping: CI never skips them silently."""


def _why_not(limits: SandboxLimits) -> str:
    try:
        iso = check_isolation(limits)
    except SandboxUnavailableError as exc:
        return str(exc)
    return "" if iso.tree_limits else f"no cgroup for tree limits here ({iso.cgroups})"


BWRAP = SandboxLimits(isolation="bubblewrap", timeout_s=20)
LANDLOCK = SandboxLimits(isolation="landlock", timeout_s=20)


@functools.cache
def bubblewrap_missing(*, tree_limits: bool = False) -> str:
    """Why the bubblewrap sandbox cannot run model-written code here ("" when it can);
    with ``tree_limits``, also when no cgroup bounds a run's whole process tree."""
    if not tree_limits:
        try:
            check_isolation(BWRAP, untrusted=True)
        except SandboxUnavailableError as exc:
            return str(exc)
        return ""
    return _why_not(BWRAP)


_NO_LANDLOCK_TREE = _why_not(LANDLOCK)
# The bubblewrap backend with tree limits (conftest.py skips it, or fails it in CI).
needs_bwrap = pytest.mark.bubblewrap(tree_limits=True)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root daemon")
# Both backends, where they can enforce tree limits here (a root daemon on cgroups).
BACKENDS = [
    pytest.param(BWRAP, id="bubblewrap", marks=needs_bwrap),
    pytest.param(LANDLOCK, id="landlock", marks=pytest.mark.skipif(
        bool(_NO_LANDLOCK_TREE), reason=f"Landlock backend: {_NO_LANDLOCK_TREE}")),
]


AUTO = SandboxLimits(timeout_s=20)


async def run(
    source: str, *, limits: SandboxLimits = AUTO, path: str = "test_sub.py",
    extra: dict[str, str] | None = None,
) -> TestReport:  # fmt: skip
    files = [SourceFile(path=path, content=textwrap.dedent(source))]
    files += [SourceFile(path=p, content=textwrap.dedent(c)) for p, c in (extra or {}).items()]
    return await run_tests(files, limits=limits)


def alive_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line carries ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            pids.append(int(entry))
    return pids


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique string for a test's processes; none may be alive when run_tests returned
    (checked at once, and again after a moment for processes still on their way out)."""
    value = f"sandbox-marker-{uuid.uuid4().hex}"
    yield value
    deadline = time.monotonic() + 0.5
    while alive_with(value) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive_with(value) == []
