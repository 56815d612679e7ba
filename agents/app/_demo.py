"""The offline team: scripted models that play architect, coder and reviewer.

They read the request like a real model would (goal, findings, test report)
and answer from a small script, so the demo shows both send-back routes:

- ``fizzbuzz``: the coder's first code fails its own tests in the sandbox;
  the reviewer sends it back to the coder, the fix is approved.
- ``slugify``: the first design ignores a constraint (non-ASCII titles);
  the reviewer sends the design back to the architect, then approves.

Any other goal gets a small generic solution that passes its tests, so
``swarmbus up --offline`` answers kick-offs from any service without keys.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from typing import Any

import anyio
from pydantic import BaseModel

from swarmbus.protocols import (
    Code,
    CodeEdits,
    Component,
    ComponentPlan,
    Design,
    Edit,
    Finding,
    ParallelDesign,
    SourceFile,
    Text,
    Verdict,
)

from ..models import FunctionModel, Model, ModelRequest

__all__ = ["DEMO_TASKS", "offline_models", "run_demo"]

DEMO_TASKS = [
    (
        "demo-fizzbuzz",
        "Write fizzbuzz(n) returning the FizzBuzz strings for 1..n",
        ["pure function, no printing"],
    ),
    (
        "demo-slugify",
        "Write slugify(title) that turns an article title into a URL slug",
        ["non-ASCII titles must be transliterated: 'Crème Brûlée!' -> 'creme-brulee'"],
    ),
]

_FIZZ_BUGGY = '''def fizzbuzz(n: int) -> list[str]:
    out = []
    for i in range(1, n):  # off by one: n itself is missing
        out.append("FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0
                   else "Buzz" if i % 5 == 0 else str(i))
    return out
'''
_FIZZ_FIXED = _FIZZ_BUGGY.replace("range(1, n):  # off by one: n itself is missing",
                                  "range(1, n + 1):")
_FIZZ_TEST = '''from fizzbuzz import fizzbuzz


def test_first_fifteen():
    got = fizzbuzz(15)
    assert len(got) == 15
    assert got[2] == "Fizz" and got[4] == "Buzz" and got[14] == "FizzBuzz"


def test_empty():
    assert fizzbuzz(0) == []
'''
_SLUG_ASCII = '''import re


def slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
'''
_SLUG_UNICODE = '''import re
import unicodedata


def slugify(title: str) -> str:
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
'''
_SLUG_TEST = '''from slugify import slugify


def test_spaces_and_punctuation():
    assert slugify("Hello, World!") == "hello-world"
'''
_SLUG_TEST_UNICODE = _SLUG_TEST + '''

def test_non_ascii_is_transliterated():
    assert slugify("Crème Brûlée!") == "creme-brulee"
'''


_GENERIC_TEST = "from solution import solve\n\n\ndef test_solve():\n    assert solve()\n"


def _prompt(request: ModelRequest[Any]) -> str:
    return "\n".join(m.content for m in request.messages)


def _has_findings(prompt: str) -> bool:
    return "## Findings to address" in prompt


# A parallel design for any goal (builtin:code-review-parallel): two components, the
# second using the first through the interface.
_PARALLEL_INTERFACE = ("def words(text: str) -> list[str]: ...\n\n\n"
                       "def solve() -> str: ...\n")
_WORDS = ("def words(text: str) -> list[str]:\n"
          "    return [w for w in text.replace(',', ' ').split() if w]\n")
_WORDS_TEST = ("from words import words\n\n\ndef test_words():\n"
               "    assert words('a, b c') == ['a', 'b', 'c']\n")
_SOLVE_TEST = ("from solution import solve\n\n\ndef test_solve():\n"
               "    assert solve()\n")


def _parallel_design(goal: str) -> ParallelDesign:
    return ParallelDesign(
        summary=f"Two modules: words splits text, solution answers the goal: {goal[:200]}",
        interface=SourceFile(path="interface.py", content=_PARALLEL_INTERFACE),
        components=[
            ComponentPlan(name="words", responsibility="split text into words",
                          files=["words.py", "test_words.py"],
                          provides=["words(text: str) -> list[str]"]),
            ComponentPlan(name="solve", responsibility="answer the goal with words()",
                          files=["solution.py", "test_solution.py"],
                          provides=["solve() -> str"], depends_on=["words"]),
        ],
        acceptance_criteria=["words('a, b c') == ['a', 'b', 'c']", "solve() is not empty"],
    )


def _component(prompt: str, goal: str) -> Code | None:
    """A coder's answer for one component of the parallel design, if asked for one."""
    found = re.search(r"Build component (\w+)", prompt)
    if found is None:
        return None
    if found.group(1) == "words":
        return Code(files=[SourceFile(path="words.py", content=_WORDS),
                           SourceFile(path="test_words.py", content=_WORDS_TEST)])
    text = " ".join(re.sub(r"[^\w .,-]", "", goal)[:200].split()) or "done"
    source = f"from words import words\n\n\ndef solve() -> str:\n" \
             f"    return ' '.join(words({text!r}))\n"
    return Code(files=[SourceFile(path="solution.py", content=source),
                       SourceFile(path="test_solution.py", content=_SOLVE_TEST)])


def _architect(request: ModelRequest[Any]) -> Design | ParallelDesign:
    prompt = _prompt(request)
    goal = prompt.split("## Goal", 1)[-1].split("##", 1)[0].strip()
    if issubclass(request.output_type, ParallelDesign):
        return _parallel_design(goal)
    if "slugify" in goal:
        if _has_findings(prompt):
            return Design(
                summary="slugify(title): NFKD-normalise, drop non-ASCII marks, lower-case, "
                "join alphanumeric runs with '-'. Revised: transliterates non-ASCII titles.",
                components=[Component(name="slugify", responsibility="title -> slug")],
                interfaces=["slugify(title: str) -> str"],
                files=["slugify.py", "test_slugify.py"],
                acceptance_criteria=["'Hello, World!' -> 'hello-world'",
                                     "'Crème Brûlée!' -> 'creme-brulee'"],
            )
        return Design(
            summary="slugify(title): lower-case and join alphanumeric runs with '-'.",
            components=[Component(name="slugify", responsibility="title -> slug")],
            interfaces=["slugify(title: str) -> str"],
            files=["slugify.py", "test_slugify.py"],
            acceptance_criteria=["'Hello, World!' -> 'hello-world'"],
        )
    if "fizzbuzz" in goal:
        return Design(
            summary="fizzbuzz(n) returns ['1', '2', 'Fizz', ...] for 1..n inclusive.",
            components=[Component(name="fizzbuzz", responsibility="n -> list of strings")],
            interfaces=["fizzbuzz(n: int) -> list[str]"],
            files=["fizzbuzz.py", "test_fizzbuzz.py"],
            acceptance_criteria=["len(fizzbuzz(15)) == 15", "fizzbuzz(15)[14] == 'FizzBuzz'",
                                 "fizzbuzz(0) == []"],
        )
    return Design(
        summary=f"A module `solution` with solve() describing the goal: {goal[:200]}",
        components=[Component(name="solve", responsibility="answers the goal")],
        interfaces=["solve() -> str"],
        files=["solution.py", "test_solution.py"],
        acceptance_criteria=["solve() returns a non-empty string"],
    )


def _coder(request: ModelRequest[Any]) -> Code | CodeEdits:
    answer = _code(request)
    if isinstance(answer, Code) and issubclass(request.output_type, CodeEdits):
        # The whole new set of files as a revision: what it no longer has is deleted.
        prompt = _prompt(request)
        mine = prompt.split("## Your previous code", 1)[1].split("\n## ", 1)[0] \
            if "## Your previous code" in prompt else ""
        before = re.findall(r"^### (\S+)$", mine, flags=re.M)
        now = {f.path for f in answer.files}
        return CodeEdits(files=answer.files, notes=answer.notes,
                         delete=[p for p in before if p not in now])
    return answer


def _code(request: ModelRequest[Any]) -> Code | CodeEdits:
    prompt = _prompt(request)
    buggy = "    for i in range(1, n):  # off by one: n itself is missing\n"
    if issubclass(request.output_type, CodeEdits) and "## Your previous code" in prompt \
            and buggy in prompt:
        # A later round: the one line that changes, as an edit of the current code.
        return CodeEdits(edits=[Edit(
            path="fizzbuzz.py", search=buggy, replace="    for i in range(1, n + 1):\n")],
            notes="fixed the range")
    part = _component(prompt, prompt.split("## Goal", 1)[-1].split("##", 1)[0].strip())
    if part is not None:
        return part
    if "def words(text: str)" in prompt and "Build component" not in prompt:
        return Code(files=[SourceFile(path="interface.py", content=_PARALLEL_INTERFACE),
                           *(_component("Build component words", "") or Code(files=[])).files,
                           *(_component("Build component solve", prompt.split(
                               "## Goal", 1)[-1].split("##", 1)[0].strip())
                             or Code(files=[])).files])
    if "slugify(title: str)" in prompt:
        if "transliterates" in prompt:
            files = [SourceFile(path="slugify.py", content=_SLUG_UNICODE),
                     SourceFile(path="test_slugify.py", content=_SLUG_TEST_UNICODE)]
        else:
            files = [SourceFile(path="slugify.py", content=_SLUG_ASCII),
                     SourceFile(path="test_slugify.py", content=_SLUG_TEST)]
        return Code(files=files, notes="slugify with its tests")
    if "fizzbuzz(n: int)" in prompt:
        source = _FIZZ_FIXED if _has_findings(prompt) else _FIZZ_BUGGY
        return Code(files=[SourceFile(path="fizzbuzz.py", content=source),
                           SourceFile(path="test_fizzbuzz.py", content=_FIZZ_TEST)],
                    notes="fixed the range" if _has_findings(prompt) else "first version")
    goal = prompt.split("## Goal", 1)[-1].split("##", 1)[0].strip()
    text = re.sub(r"[^\w .,-]", "", goal)[:200] or "done"
    return Code(files=[
        SourceFile(path="solution.py", content=f"def solve() -> str:\n    return {text!r}\n"),
        SourceFile(path="test_solution.py", content=_GENERIC_TEST),
    ])


def _reviewer(request: ModelRequest[Any]) -> Verdict:
    prompt = _prompt(request)
    report = prompt.split("## Test report", 1)[-1]
    passed = re.search(r"exit code 0, passed \d+, failed 0, errors 0", report) is not None
    if "slugify(title: str)" in prompt and "Crème" not in prompt.split("## Current design")[-1]:
        return Verdict(
            decision="revise_design",
            summary="the design ignores the constraint on non-ASCII titles",
            findings=[Finding(
                severity="major", location="design: acceptance_criteria",
                explanation="constraint says 'Crème Brûlée!' -> 'creme-brulee'; the design "
                "has no transliteration step and no criterion for it", target="architect")],
        )
    if not passed:
        failing = re.findall(r"^- (\S+)$", report, flags=re.M)
        return Verdict(
            decision="revise_code",
            summary="the submitted tests fail",
            findings=[Finding(severity="critical", location=name,
                              explanation="this test fails; fix the code", target="coder")
                      for name in failing] or [Finding(
                severity="critical", location="tests", explanation="tests fail",
                target="coder")],
        )
    return Verdict(decision="approve", summary="implements the design; tests pass")


def _any(request: ModelRequest[Any]) -> BaseModel:
    """Any step of any workflow: the team's answers by output type, else a default."""
    out = request.output_type
    if issubclass(out, Design | ParallelDesign):
        return _architect(request)
    if issubclass(out, Code | CodeEdits):
        return _coder(request)
    if issubclass(out, Verdict):
        return _reviewer(request)
    if issubclass(out, Text):
        return Text(text="done: " + _prompt(request)[:200])
    value: BaseModel = out.model_validate({})  # a type whose fields all have defaults
    return value


def offline_models(*, latency_s: float = 0.0) -> dict[str, Model]:
    """Scripted models for the three roles, and ``any`` for any other step (no keys,
    no network)."""
    keep = 100  # `swarmbus up --offline` may run for days: keep only the last requests
    return {
        "architect": FunctionModel(_architect, name="scripted:architect", latency_s=latency_s,
                                   keep_requests=keep),
        "coder": FunctionModel(_coder, name="scripted:coder", latency_s=latency_s,
                               keep_requests=keep),
        "reviewer": FunctionModel(_reviewer, name="scripted:reviewer", latency_s=latency_s,
                                  keep_requests=keep),
        "any": FunctionModel(_any, name="scripted:offline", latency_s=latency_s,
                             keep_requests=keep),
    }


async def run_demo(*, json_out: bool = False) -> int:
    """The offline demo: an embedded nats-server, the built-in workflow on scripted
    models, both demo tasks at once; prints each trail and result. Exit code 0
    when both are approved."""
    from swarmbus.bus import EmbeddedServer, SwarmClient
    from swarmbus.protocols import TaskRequest, TaskResult

    from .._swarm import Swarm
    from ..sandbox import describe_isolation
    from ._commands import follow
    from ._config import load_config
    from ._render import render_result, render_trail
    from ._team import build_agents

    with tempfile.TemporaryDirectory(prefix="swarmbus-demo-") as tmp:
        async with EmbeddedServer(data_dir=tmp) as server:
            cfg = load_config(None, environ={}, offline=True, namespace="demo")
            # The demo runs the project's own scripted code: any isolation will do, say which.
            sandbox = describe_isolation(cfg.sandbox, untrusted=False)
            print(f"embedded nats-server on {server.url}; scripted models (offline)\n"
                  f"sandbox: {sandbox}\n", file=sys.stderr if json_out else sys.stdout)
            async with Swarm(build_agents(cfg), nats=server.url, namespace="demo", grace_s=5):
                client = await SwarmClient.connect(server.url, namespace="demo")
                async with client:
                    results: dict[str, TaskResult] = {}

                    async def run(wf: str, goal: str, constraints: list[str]) -> None:
                        await client.submit(TaskRequest(goal=goal, constraints=constraints),
                                            workflow_id=wf)
                        result = await follow(client, wf, quiet=json_out)
                        assert result is not None  # no deadline: it waits for the result
                        results[wf] = result

                    with anyio.fail_after(120):
                        async with anyio.create_task_group() as tg:
                            for wf, goal, constraints in DEMO_TASKS:
                                tg.start_soon(run, wf, goal, constraints)
                    trails = {wf: await client.trail(wf) for wf, _, _ in DEMO_TASKS}
    if json_out:
        print(json.dumps({wf: r.model_dump(mode="json") for wf, r in results.items()}, indent=2))
    else:
        for wf, _, _ in DEMO_TASKS:
            print()
            print(render_trail(wf, trails[wf], diffs=True))
            print(render_result(wf, results[wf]))
    ok = all(r.status == "approved" for r in results.values())
    print("\ndemo " + ("passed: both tasks approved" if ok else "FAILED"), file=sys.stderr)
    return 0 if ok else 1
