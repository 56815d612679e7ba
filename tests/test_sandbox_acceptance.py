"""Hidden acceptance tests: a run of their own, counted only with exit code 0 and the
run's random token, which the submission never sees before the checks ran."""

from __future__ import annotations

import time

import pytest
from _sandbox_helpers import AUTO, BACKENDS

from swarmbus.agents.sandbox import SandboxLimits, run_acceptance
from swarmbus.protocols import ConfigError, SourceFile

pytestmark = pytest.mark.anyio

HIDDEN = [
    SourceFile(
        path="test_hidden.py",
        content="from slug import slugify\n\n"
        "def test_spaces():\n    assert slugify('Hello World') == 'hello-world'\n\n"
        "def test_accents():\n    assert slugify('Crème Brûlée') == 'creme-brulee'\n",
    )
]
CORRECT = (
    "import re, unicodedata\n\n"
    "def slugify(title):\n"
    "    text = unicodedata.normalize('NFKD', title).encode('ascii', 'ignore').decode()\n"
    "    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')\n"
)
# The submission's own tests and a conftest that turns every failure into a pass: an
# acceptance run ignores both.
OWN = [
    SourceFile(path="test_own.py", content="def test_own():\n    assert False\n"),
    SourceFile(
        path="conftest.py",
        content="import pytest\n\n@pytest.hookimpl(hookwrapper=True)\n"
        "def pytest_runtest_makereport(item, call):\n"
        "    outcome = yield\n    report = outcome.get_result()\n"
        "    report.outcome = 'passed'\n",
    ),
]


def slug(content: str) -> list[SourceFile]:
    return [SourceFile(path="slug.py", content=content), *OWN]


@pytest.mark.parametrize("limits", BACKENDS)
async def test_a_correct_solution_passes(limits: SandboxLimits) -> None:
    report = await run_acceptance(slug(CORRECT), HIDDEN, limits=limits)
    assert report.ok and report.kind == "acceptance" and report.token_verified, report.output
    assert (report.passed, report.failed) == (2, 0)


async def test_a_wrong_solution_fails() -> None:
    wrong = "def slugify(title):\n    return title.lower().replace(' ', '-')\n"
    report = await run_acceptance(slug(wrong), HIDDEN, limits=AUTO)
    assert not report.ok and report.failed == 1 and report.passed == 1, report.output
    assert report.failed_tests == ["test_hidden.py::test_accents"]


@pytest.mark.parametrize(
    "cheat",
    [
        "import os\nos._exit(0)\n",
        "import sys\nprint('2 passed in 0.01s')\nprint('{\"passed\": 2, \"exitstatus\": 0}')\n"
        "sys.stdout.flush()\nimport os\nos._exit(0)\n",
        "import atexit, os\n"
        "atexit.register(lambda: os._exit(0))\n"
        "def slugify(title):\n    raise SystemExit(0)\n",
    ],
    ids=["exit-at-import", "fake-pass-line", "exit-during-test"],
)
async def test_a_cheat_fails(cheat: str) -> None:
    report = await run_acceptance(slug(cheat), HIDDEN, limits=AUTO)
    assert not report.ok and not report.token_verified, report.output


async def test_a_solution_that_never_ends_times_out() -> None:
    start = time.monotonic()
    report = await run_acceptance(
        slug("def slugify(title):\n    while True:\n        pass\n"), HIDDEN,
        limits=SandboxLimits(timeout_s=3),
    )  # fmt: skip
    assert report.timed_out and not report.ok and "timeout" in report.limits_hit
    assert time.monotonic() - start < 3 + 5


async def test_acceptance_needs_tests() -> None:
    with pytest.raises(ConfigError):
        await run_acceptance(slug(CORRECT), [])


async def test_the_workflow_tool_runs_hidden_tests_through_run_acceptance() -> None:
    from swarmbus.agents.workflow import SandboxPytest, default_tools

    tool = default_tools(AUTO)["sandbox.pytest"]
    assert isinstance(tool, SandboxPytest) and tool.acceptance is not None
    report = await tool.acceptance(slug(CORRECT), HIDDEN)
    assert report.kind == "acceptance" and report.ok and report.token_verified, report.output
