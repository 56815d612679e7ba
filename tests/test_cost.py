"""Cost per task on a real nats-server: a step that revises its own code answers with
edits (applied, repaired once, else whole files), every call paid and counted; the
prompt goes out in sections with Anthropic cache breakpoints where a later round sends
the same prefix again, and with OpenAI's prompt_cache_key, through the real SDKs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _run_helpers import CALL_USD, billed, flow, prompt_of, refused, run_one
from _vendor_fakes import FakeServer, Seen, anthropic_body, openai_body
from pydantic import BaseModel

from swarmbus.agents.app import build_agents, load_config, render_trail
from swarmbus.agents.models import (
    Model,
    ModelConfig,
    ModelRequest,
    ModelSpec,
    ProviderError,
    block_real_models,
    build_model,
)
from swarmbus.agents.workflow import (
    EDITS_ANSWER,
    WHOLE_AGAIN,
    WHOLE_ANSWER,
    SandboxPytest,
    StepAgent,
    StepCall,
    default_tools,
    team,
)
from swarmbus.bus import ConsumerSettings
from swarmbus.protocols import (
    Code,
    CodeEdits,
    CompiledWorkflow,
    ConfigError,
    Design,
    Edit,
    Finding,
    Review,
    SourceFile,
    TaskRequest,
    TestReport,
    Verdict,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

CALC = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
V1 = Code(files=[SourceFile(path="calc.py", content=CALC),
                 SourceFile(path="test_calc.py", content=TEST)], notes="v1")
GOOD = Edit(path="calc.py", search="    return a - b\n", replace="    return a + b\n")
BAD = Edit(path="calc.py", search="    return a minus b\n", replace="    return a + b\n")


def loop(**coder: Any) -> CompiledWorkflow:
    """implement -> check, which sends the code back once, then approves."""
    return flow({"name": "fixer", "artifacts": {"code": "swarmbus.Code",
                                                "review": "swarmbus.Review"},
                 "steps": [{"id": "implement", "role": "coder", "output": "code", **coder},
                           {"id": "check", "role": "checker", "input": "code",
                            "output": "review",
                            "routes": {"approve": "end", "revise": {"to": "implement",
                                                                    "max": 3}}}]})


class Team:
    """A coder that answers ``V1`` first, then ``answers`` in order; a checker that sends
    the first code back and approves the next. Every request is kept."""

    def __init__(self, *answers: Code | CodeEdits) -> None:
        self.answers = list(answers)
        self.coder_requests: list[ModelRequest[Any]] = []
        self.checker_requests: list[ModelRequest[Any]] = []

    def coder(self, request: ModelRequest[Any]) -> Code | CodeEdits:
        self.coder_requests.append(request)
        return V1 if len(self.coder_requests) == 1 else self.answers.pop(0)

    def checker(self, request: ModelRequest[Any]) -> Review:
        self.checker_requests.append(request)
        if len(self.checker_requests) == 1:
            return Review(decision="revise", summary="add subtracts", findings=[Finding(
                severity="critical", location="calc.py:2", target="coder",
                explanation="add must add")])
        return Review(decision="approve", summary="adds")

    def models(self) -> dict[str, Model]:
        return {"coder": billed(self.coder, "t:coder"),
                "checker": billed(self.checker, "t:checker")}


async def run_loop(t: Team, nats_url: str, namespace: str, **coder: Any) -> Any:
    result, trail = await run_one(team(loop(**coder), models=t.models(), tools={}),
                                  nats_url, namespace, TaskRequest(goal="Write add(a, b)"))
    assert result.status == "approved", result.reason
    return result, trail


def files(value: Any) -> dict[str, str]:
    return {f["path"]: f["content"] for f in value["files"]}


# -- edits ---------------------------------------------------------------------------------


async def test_a_later_round_answers_with_edits_that_the_reviewer_sees_applied(
    nats_url: str, namespace: str
) -> None:
    t = Team(CodeEdits(edits=[GOOD], notes="fixed add"))
    result, trail = await run_loop(t, nats_url, namespace)
    # one type every round, so the requests share their prefix
    assert [r.output_type for r in t.coder_requests] == [CodeEdits, CodeEdits]
    second = prompt_of(t.coder_requests[1])
    assert "## Your previous code" in second and f"## How to answer\n\n{EDITS_ANSWER}" in second
    assert "## Findings to address" in second
    first = prompt_of(t.coder_requests[0])
    assert "## Your previous code" not in first and "There is no code yet" in first
    assert files(result.artifacts["code"]) == {"calc.py": FIXED, "test_calc.py": TEST}
    assert result.artifacts["code"]["notes"] == "fixed add"
    review = prompt_of(t.checker_requests[1])  # the new files, and what changed
    assert f"### calc.py\n```\n{FIXED}\n```" in review
    assert "## Changes to code in its last revision\n\n```diff\n--- a/calc.py\n+++ b/calc.py" \
        in review and "-    return a - b\n+    return a + b\n" in review
    assert result.spend["coder"].calls == 2
    assert result.spend["coder"].cost_usd == 2 * CALL_USD
    assert "1 file changed, +1 -1" in render_trail("wf1", trail)
    shown = render_trail("wf1", trail, diffs=True)  # `swarmbus trail --diff`
    assert "        -    return a - b\n        +    return a + b" in shown
    assert "-    return a - b" not in render_trail("wf1", trail)


async def test_an_edit_that_does_not_apply_gets_one_repair_naming_it(
    nats_url: str, namespace: str
) -> None:
    note = Edit(path="test_calc.py", search="def test_add():\n",
                replace="def test_add() -> None:\n")
    t = Team(CodeEdits(edits=[note, BAD]), CodeEdits(edits=[GOOD]))
    result, _ = await run_loop(t, nats_url, namespace)
    assert [r.output_type for r in t.coder_requests] == [CodeEdits, CodeEdits, CodeEdits]
    repair = t.coder_requests[2].messages
    assert [m.role for m in repair] == ["user", "assistant", "user"]
    assert repair[1].content == CodeEdits(edits=[note, BAD]).model_dump_json()
    asked = repair[2].content
    assert "- edit 2 (calc.py): its search text is not in the file" in asked
    assert f"### calc.py\n```\n{CALC}\n```" in asked  # the file as it is now
    assert "test_calc.py" not in asked  # the edit that applied is not asked again
    assert files(result.artifacts["code"]) == {
        "calc.py": FIXED, "test_calc.py": TEST.replace("test_add():", "test_add() -> None:")}
    assert result.spend["coder"].calls == 3  # each paid and counted
    assert result.total.cost_usd == 5 * CALL_USD


async def test_edits_failing_twice_fall_back_to_whole_files(
    nats_url: str, namespace: str
) -> None:
    whole = Code(files=[SourceFile(path="calc.py", content=FIXED),
                        SourceFile(path="test_calc.py", content=TEST)], notes="whole")
    t = Team(CodeEdits(edits=[BAD]), CodeEdits(edits=[BAD]), whole)
    result, _ = await run_loop(t, nats_url, namespace)
    assert [r.output_type for r in t.coder_requests] == [CodeEdits, CodeEdits, CodeEdits, Code]
    last = t.coder_requests[3]
    assert len(last.messages) == 1 and WHOLE_ANSWER in last.messages[0].content
    assert result.artifacts["code"] == whole.model_dump(mode="json")
    assert result.spend["coder"].calls == 4
    assert result.spend["coder"].cost_usd == 4 * CALL_USD


async def test_a_model_that_cannot_answer_in_edits_is_asked_for_whole_files(
    nats_url: str, namespace: str
) -> None:
    """Invalid twice (the model layer's own repair included) is not the end of the run:
    the previous code was good, so the step asks for every file whole."""
    whole = Code(files=[SourceFile(path="calc.py", content=FIXED),
                        SourceFile(path="test_calc.py", content=TEST)])
    t = Team("not json", "still not json", whole)  # type: ignore[arg-type]
    result, _ = await run_loop(t, nats_url, namespace)
    assert [r.output_type for r in t.coder_requests] == [CodeEdits, CodeEdits, CodeEdits, Code]
    assert result.artifacts["code"] == whole.model_dump(mode="json")
    assert result.spend["coder"].calls == 4  # the invalid answers were paid too
    assert result.spend["coder"].cost_usd == 4 * CALL_USD


async def test_revise_whole_asks_for_every_file_again(nats_url: str, namespace: str) -> None:
    whole = Code(files=[SourceFile(path="calc.py", content=FIXED),
                        SourceFile(path="test_calc.py", content=TEST)])
    t = Team(whole)
    result, _ = await run_loop(t, nats_url, namespace, revise="whole")
    assert [r.output_type for r in t.coder_requests] == [Code, Code]
    assert "## How to answer" not in prompt_of(t.coder_requests[0])
    assert f"## How to answer\n\n{WHOLE_AGAIN}" in prompt_of(t.coder_requests[1])
    assert files(result.artifacts["code"])["calc.py"] == FIXED
    # the reviewer still reads what changed
    assert "+    return a + b" in prompt_of(t.checker_requests[1])


async def test_a_role_set_to_whole_files_is_asked_for_every_file_unless_its_step_says(
    nats_url: str, namespace: str
) -> None:
    whole = Code(files=[SourceFile(path="calc.py", content=FIXED),
                        SourceFile(path="test_calc.py", content=TEST)])
    t = Team(whole)
    await run_one(team(loop(), models=t.models(), tools={}, revise={"coder": "whole"}),
                  nats_url, namespace, TaskRequest(goal="Write add(a, b)"))
    assert [r.output_type for r in t.coder_requests] == [Code, Code]
    t = Team(CodeEdits(edits=[GOOD]))  # the workflow's own word wins over the role's default
    await run_one(team(loop(revise="edits"), models=t.models(), tools={},
                       revise={"coder": "whole"}),
                  nats_url, f"{namespace}2", TaskRequest(goal="Write add(a, b)"))
    assert [r.output_type for r in t.coder_requests] == [CodeEdits, CodeEdits]


def test_swarm_yaml_sets_a_roles_revision_and_refuses_an_unknown_one() -> None:
    agents = build_agents(load_config(None, environ={}, offline=True,
                                      roles={"coder": {"revise": "whole"}}))
    revise = {a.role: a.revise for a in agents if isinstance(a, StepAgent)}
    assert revise == {"architect": "edits", "coder": "whole", "reviewer": "edits"}
    with pytest.raises(ConfigError, match="revise"):
        load_config(None, environ={}, roles={"coder": {"revise": "diff"}})


def test_edits_are_refused_for_an_output_that_is_not_code(tmp_path: Path) -> None:
    file = tmp_path / "notes.yaml"
    file.write_text("artifacts: {draft: swarmbus.Text}\n"
                    "steps:\n- {id: write, role: writer, output: draft, revise: edits}\n")
    refused(file, "steps[0].revise", "Text is not swarmbus.Code")


# -- the response cache: a redelivered review of failing code does not pay again -------------

ADDRESSES = "class A:\n    pass\n\n\ndef test_a():\n    assert A() == A()\n"


class LosesFirstAnswer(StepAgent):
    """A reviewer whose first answer is lost after its model gave it (a transient error,
    as a dropped connection before the hand-on would be): the message is redelivered."""

    lost = False

    async def perform(self, call: StepCall) -> BaseModel:
        output = await call.ask()
        if not LosesFirstAnswer.lost:
            LosesFirstAnswer.lost = True
            raise ProviderError("the answer was lost", model="t:reviewer")
        return output


async def test_a_redelivered_review_of_failing_code_is_served_from_the_response_cache(
    nats_url: str, namespace: str
) -> None:
    wf = flow({"name": "judge", "artifacts": {"code": "swarmbus.Code",
                                              "verdict": "swarmbus.Verdict"},
               "steps": [{"id": "implement", "role": "coder", "output": "code"},
                         {"id": "review", "role": "reviewer", "input": "code",
                          "output": "verdict",
                          "tools": [{"name": "sandbox.pytest", "on_fail": "revise_code"}],
                          "routes": {"approve": "end", "revise_code": {"end": "failed"},
                                     "revise_design": {"end": "failed"}}}]})
    reports: list[TestReport] = []
    run_tests = default_tools()["sandbox.pytest"]

    async def runner(files: Any) -> TestReport:
        assert isinstance(run_tests, SandboxPytest)
        reports.append(await run_tests.runner(files))
        return reports[-1]

    asked: list[str] = []

    def reviewer(request: ModelRequest[Any]) -> Verdict:
        asked.append(prompt_of(request))
        return Verdict(decision="revise_code", summary="test_a fails")

    models: dict[str, Model] = {
        "coder": billed(lambda _r: Code(files=[SourceFile(path="test_m.py",
                                                          content=ADDRESSES)]), "t:coder"),
        "reviewer": billed(reviewer, "t:reviewer")}
    tools = {"sandbox.pytest": SandboxPytest(runner)}
    fast = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=30, max_deliver=3)
    result, _ = await run_one(team(wf, models=models, tools=tools, cache_ttl_s=60,
                                   consumers={"reviewer": fast},
                                   classes={"reviewer": LosesFirstAnswer}),
                              nats_url, namespace, TaskRequest(goal="Write A"), timeout_s=80)
    assert result.status == "failed" and result.reason == "test_a fails"
    assert len(reports) == 2 and not reports[0].ok  # the sandbox ran for each delivery,
    assert reports[0].output != reports[1].output  # and pytest wrote other addresses
    assert "object at 0x" in reports[0].output
    assert len(asked) == 1  # the second delivery's request was the same: not asked again
    spent = result.spend["reviewer"]
    assert (spent.calls, spent.cache_hits, spent.cost_usd) == (1, 1, CALL_USD)


# -- provider prompt caches, on the wire ----------------------------------------------------

DESIGN = Design(summary="add(a, b) returns the sum " + "in detail " * 400,
                interfaces=["add(a, b) -> int"], files=["calc.py", "test_calc.py"])


def three_steps() -> CompiledWorkflow:
    """design -> implement -> check (back to implement once): the design reaches every
    later round of the coder and the checker unchanged; the code changes each round."""
    return flow({"name": "cached", "artifacts": {"design": "swarmbus.Design",
                                                 "code": "swarmbus.Code",
                                                 "review": "swarmbus.Review"},
                 "steps": [{"id": "design", "role": "architect", "output": "design"},
                           {"id": "implement", "role": "coder", "input": "design",
                            "output": "code"},
                           {"id": "check", "role": "checker", "input": "design + code",
                            "output": "review",
                            "routes": {"approve": "end", "revise": {"to": "implement",
                                                                    "max": 3}}}]})


def answer(seen: Seen) -> dict[str, Any]:
    """Each role's answer in the wire format it was asked in; the checker sends the first
    code back. Anthropic's usage: 1,000 tokens read from the cache, 500 written."""
    text = seen.prompt_text()
    if "You are the architect" in text:
        reply = DESIGN.model_dump_json()
    elif "You are the coder" in text:
        reply = (CodeEdits(edits=[GOOD]) if "## Your previous code" in text
                 else V1).model_dump_json()
    elif "return a - b" in text.split("## Current code", 1)[-1].split("\n## ", 1)[0]:
        reply = Review(decision="revise", summary="subtracts", findings=[Finding(
            severity="major", target="coder", explanation="add must add")]).model_dump_json()
    else:
        reply = Review(decision="approve", summary="adds").model_dump_json()
    if seen.vendor == "anthropic":
        return anthropic_body(reply, input_tokens=100, output_tokens=10, cache_read=1000,
                              cache_write_5m=500)
    return openai_body(reply, prompt_tokens=100, completion_tokens=10)


@pytest.fixture
def vendor(fake_keys: str) -> Iterator[FakeServer]:
    with FakeServer(responder=answer) as server, block_real_models(False):
        yield server


async def run_on(fake: FakeServer, nats_url: str, namespace: str, **spec: Any) -> Any:
    def build(config: ModelConfig) -> Model:
        assert isinstance(config, str)
        base = fake.url + ("/v1" if config.startswith("openai") else "")
        return build_model(ModelSpec(name=config, base_url=base, **spec))

    name = spec.pop("name", "anthropic:claude-sonnet-4-5")
    models = {role: build(name) for role in ("architect", "coder", "checker")}
    with anyio.fail_after(60):
        result, _ = await run_one(team(three_steps(), models=models, tools={}), nats_url,
                                  namespace, TaskRequest(goal="Write add(a, b)"))
    assert result.status == "approved", result.reason
    by_role: dict[str, list[Seen]] = {}
    for s in fake.requests:
        role = next(r for r in ("architect", "coder", "checker")
                    if f"You are the {r}" in s.prompt_text())
        by_role.setdefault(role, []).append(s)
    return result, by_role


def blocks(seen: Seen) -> list[dict[str, Any]]:
    (message,) = seen.body["messages"]
    content = message["content"]
    assert isinstance(content, list), content
    return list(content)


def breakpoints(seen: Seen) -> list[str]:
    """The first line of each block that ends a cached prefix (system included)."""
    system = seen.body["system"]
    out = ["system" for b in system if "cache_control" in b] if isinstance(system, list) else []
    return out + [b["text"].split("\n", 1)[0] for b in blocks(seen) if "cache_control" in b]


async def test_anthropic_breakpoints_end_what_the_next_round_sends_again(
    vendor: FakeServer, nats_url: str, namespace: str
) -> None:
    result, seen = await run_on(vendor, nats_url, namespace)
    coder, checker = seen["coder"], seen["checker"]
    assert (len(seen["architect"]), len(coder), len(checker)) == (1, 2, 2)
    # The architect never runs twice in a run: nothing of its message is written.
    assert breakpoints(seen["architect"][0]) == ["system"]
    for s in (*coder, *checker):
        assert breakpoints(s) == ["system", "## Goal", "## Current design"]
        assert s.body["system"][0]["cache_control"] == {"type": "ephemeral"}  # 5 minutes
        kinds = [b["text"].split("\n", 1)[0] for b in blocks(s)]
        assert kinds.index("## Current design") < kinds.index("## Round")
    # The prefix up to the last breakpoint is the same bytes in both rounds: it is read.
    for first, second in (coder, checker):
        def upto(s: Seen) -> list[Any]:
            content = blocks(s)
            last = max(i for i, b in enumerate(content) if "cache_control" in b)
            return [s.body["system"], content[: last + 1]]

        assert upto(first) == upto(second)
        assert blocks(first) != blocks(second)  # what follows changed
    assert "## Current code" in [b["text"].split("\n", 1)[0] for b in blocks(checker[0])]
    # the cache's tokens are counted and priced: Sonnet 4.5: 3.00 in, 0.30 read, 3.75 5m
    # write, 15.00 out; Anthropic's input_tokens excludes reads and writes
    coder_spend = result.spend["coder"]
    assert (coder_spend.calls, coder_spend.cached_tokens, coder_spend.cache_write_tokens) == (
        2, 2000, 1000)
    assert coder_spend.input_tokens == 2 * 1600
    assert coder_spend.cost_usd == pytest.approx(
        2 * (100 * 3.0 + 1000 * 0.3 + 500 * 3.75 + 10 * 15.0) / 1e6)


async def test_anthropic_one_hour_entries_and_caching_off(
    vendor: FakeServer, nats_url: str, namespace: str
) -> None:
    _, seen = await run_on(vendor, nats_url, namespace, prompt_cache="1h")
    for s in seen["coder"]:
        marked = [b["cache_control"] for b in blocks(s) if "cache_control" in b]
        assert marked == [{"type": "ephemeral", "ttl": "1h"}] * 2
    vendor.requests.clear()
    _, seen = await run_on(vendor, nats_url, f"{namespace}off", prompt_cache="off")
    for s in (r for rs in seen.values() for r in rs):
        assert isinstance(s.body["system"], str)
        assert all(isinstance(m["content"], str) for m in s.body["messages"])
        assert "cache_control" not in str(s.body)


async def test_openai_requests_carry_one_prompt_cache_key_per_run_and_step(
    vendor: FakeServer, nats_url: str, namespace: str
) -> None:
    _, seen = await run_on(vendor, nats_url, namespace, name="openai:gpt-4o")
    keys = {role: [s.body.get("prompt_cache_key") for s in rs] for role, rs in seen.items()}
    coder, checker = keys["coder"], keys["checker"]
    assert coder[0] == coder[1] and checker[0] == checker[1]
    assert len({coder[0], checker[0], keys["architect"][0]}) == 3
    assert all(k.startswith("swarmbus-") and "wf1" not in k for k in (coder[0], checker[0]))
    vendor.requests.clear()
    _, seen = await run_on(vendor, nats_url, f"{namespace}off", name="openai:gpt-4o",
                           prompt_cache="off")
    assert all("prompt_cache_key" not in s.body for rs in seen.values() for s in rs)


async def test_a_local_openai_compatible_server_gets_no_prompt_cache_key(
    vendor: FakeServer, nats_url: str, namespace: str
) -> None:
    _, seen = await run_on(vendor, nats_url, namespace, name="vllm:qwen")
    assert all("prompt_cache_key" not in s.body for rs in seen.values() for s in rs)


def test_a_workflow_is_stored_without_its_defaults_so_new_keys_change_no_hash() -> None:
    """``revise`` (new here) at its default is not in the stored form: the hash of a
    workflow that does not use it stays as it was, and a daemon of the version before,
    which would refuse the unknown key, reads it."""
    wf = loop()
    stored = wf.to_json()
    steps = json.loads(stored)["steps"]
    assert not any("revise" in s or "for_each" in s or "on_cap" in s for s in steps)
    assert json.loads(loop(revise="whole").to_json())["steps"][0]["revise"] == "whole"
    again = flow(json.loads(stored))
    assert again.hash == wf.hash and again.spec == wf.spec
