"""The run's report: the runner's line, believed only with the run's token, and the facts
observed from outside (timeout, signals, limits hit)."""

from __future__ import annotations

import json
import signal
from contextlib import suppress
from typing import Protocol

import anyio

from swarmbus.protocols import TestReport

from ._isolation import Isolation
from ._limits import SandboxLimits

__all__ = ["Captured", "build_report", "parse_report"]

_PARSE_S = 2.0
_NO_TESTS = 5  # pytest.ExitCode.NO_TESTS_COLLECTED


class Captured(Protocol):
    dropped: int

    def text(self) -> str: ...


async def parse_report(data: bytes, token: str) -> dict[str, object] | None:
    """The runner's report: the first JSON line that carries the run's token, parsed
    under a time bound (the data is already capped); None if there is none."""

    def parse() -> dict[str, object] | None:
        for line in data.split(b"\n")[:1000]:
            if token.encode() not in line:
                continue
            try:
                doc = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(doc, dict) and doc.get("token") == token:
                return doc
        return None

    with anyio.move_on_after(_PARSE_S):
        return await anyio.to_thread.run_sync(parse, abandon_on_cancel=True)
    return None


def _count(doc: dict[str, object], key: str) -> int:
    value = doc.get(key, 0)
    return value if isinstance(value, int) and 0 <= value < 10**9 else 0


def build_report(
    iso: Isolation, limits: SandboxLimits, code: int | None, timed_out: bool, output: Captured,
    doc: dict[str, object] | None, limits_hit: list[str], token: str | None,
) -> TestReport:  # fmt: skip
    if iso.backend == "bubblewrap" and code is not None and 128 < code < 160:
        code = 128 - code  # bwrap reports a child killed by signal N as 128 + N
    notes: list[str] = []
    if timed_out:
        limits_hit = [*limits_hit, "timeout"]
        notes.append(f"timed out after {limits.timeout_s:g}s; the process tree was killed")
    elif code == _NO_TESTS:
        notes.append("no tests were collected: the submission contains no tests")
    elif code is not None and code < 0:
        with suppress(ValueError):
            name = signal.Signals(-code).name
            if name == "SIGXCPU":
                limits_hit = [*limits_hit, "cpu"]
            hint = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (CPU or memory limit)"}
            notes.append(f"killed by {name}{hint.get(name, '')}")
    for hit in limits_hit:
        if hit == "memory":
            notes.append(f"the tree reached its memory limit ({limits.memory_mb} MiB)")
        elif hit == "processes":
            notes.append(f"the tree reached its process limit ({limits.max_processes} tasks)")
    failed_tests: list[str] = []
    if doc is None:
        if not timed_out:
            notes.append("the test runner sent no report (it exited or was killed before "
                         "the end of the session, or the report was forged); nothing "
                         "counts as passed")
        doc = {}
    else:
        names = doc.get("failed_tests", [])
        if isinstance(names, list):
            failed_tests = [str(n)[:300] for n in names[:200]]
    verified = (
        token is not None and doc.get("token") == token and code == 0
        and doc.get("exitstatus") == 0 and _count(doc, "passed") > 0
        and not _count(doc, "failed") and not _count(doc, "errors")
    )  # fmt: skip
    if token is not None and not verified and not timed_out:
        notes.append("acceptance: the run's token did not come back after the checks, so "
                     "the run does not count as passed")
    notes.append(f"isolation: {iso.describe()}")
    text = output.text() + "".join(f"\n[sandbox] {note}" for note in notes)
    return TestReport(
        kind="acceptance" if token else "submitted",
        passed=_count(doc, "passed"), failed=_count(doc, "failed"), errors=_count(doc, "errors"),
        failed_tests=failed_tests, exit_code=code, timed_out=timed_out, output=text,
        truncated=output.dropped > 0, isolation=iso.describe(), self_reported=True,
        token_verified=verified, limits_hit=sorted(set(limits_hit)),
    )  # fmt: skip
