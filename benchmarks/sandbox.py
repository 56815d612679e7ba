"""The cost of isolation per review run: wall time of one sandboxed pytest run.

    python benchmarks/sandbox.py [-n 21]

Runs the same small submission (a module and two tests) N times each way and prints
the median and p90 wall time in milliseconds:

- ``plain``: ``python -m pytest`` in a temporary directory, no sandbox at all, plugin
  autoload off as in the sandbox (the floor: interpreter and pytest start-up);
- ``landlock``: ``run_tests`` with ``isolation: landlock`` (rlimits, Landlock,
  seccomp, cgroups where allowed);
- ``bubblewrap``: ``run_tests`` with ``isolation: bubblewrap`` (namespaces, box on a
  tmpfs, then the same layers inside).

The ways alternate run by run, so a noisy neighbour slows all of them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from swarmbus.agents.sandbox import SandboxLimits, describe_isolation, run_tests
from swarmbus.protocols import SourceFile

FILES = [
    SourceFile(path="calc.py", content="def add(a, b):\n    return a + b\n"),
    SourceFile(
        path="test_calc.py",
        content="from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n\n"
        "def test_tmp(tmp_path):\n    (tmp_path / 'x').write_text('ok')\n",
    ),
]


def plain_run() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        for f in FILES:
            (Path(tmp) / f.path).write_text(f.content)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                       cwd=tmp, check=True, capture_output=True,
                       env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})  # fmt: skip
        return time.perf_counter() - start


async def sandboxed(limits: SandboxLimits) -> float:
    start = time.perf_counter()
    report = await run_tests(FILES, limits=limits)
    elapsed = time.perf_counter() - start
    assert report.ok, report.output
    return elapsed


async def main(n: int) -> None:
    ways = {"bubblewrap": SandboxLimits(isolation="bubblewrap"),
            "landlock": SandboxLimits(isolation="landlock")}  # fmt: skip
    for name, limits in ways.items():
        print(f"{name}: {describe_isolation(limits)}")
        await sandboxed(limits)  # warm-up: probes, interpreter layout, page cache
    plain_run()
    times: dict[str, list[float]] = {"plain": [], **{name: [] for name in ways}}
    for _ in range(n):
        times["plain"].append(await anyio.to_thread.run_sync(plain_run))
        for name, limits in ways.items():
            times[name].append(await sandboxed(limits))
    floor = statistics.median(times["plain"])
    print(f"\n{n} runs each, wall time per run (ms)")
    print(f"{'way':<12}{'median':>8}{'p90':>8}{'over plain':>12}")
    for name, values in times.items():
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:<12}{median * 1e3:>8.0f}{p90 * 1e3:>8.0f}{(median - floor) * 1e3:>+11.0f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=21, help="runs per way")
    anyio.run(main, p.parse_args().n)
