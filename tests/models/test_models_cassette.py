"""Record a run once, replay it offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _vendor_fakes import PLAN, Plan, plan_request

from swarmbus.agents.models import (
    CassetteMissError,
    RecordingModel,
    ReplayModel,
    ScriptedModel,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


async def test_record_then_replay_a_multi_role_run(tmp_path: Path) -> None:
    cassette = tmp_path / "run.jsonl"
    architect = RecordingModel(ScriptedModel([PLAN], name="google:gemini-2.5-pro"), cassette)
    coder = RecordingModel(
        ScriptedModel([Plan(title="code", steps=["a"]), Plan(title="code2", steps=[])],
                      name="openai:gpt-4o"),
        cassette,
    )
    await architect.complete(plan_request("design"))
    await coder.complete(plan_request("code"))
    await coder.complete(plan_request("code"))  # the same request, answered differently
    lines = [json.loads(line) for line in cassette.read_text().splitlines()]
    assert [entry["model"] for entry in lines] == [
        "google:gemini-2.5-pro", "openai:gpt-4o", "openai:gpt-4o",
    ]
    assert lines[0]["hash"] == plan_request("design").request_hash("google:gemini-2.5-pro")
    assert lines[0]["request"]["messages"] == [{"role": "user", "content": "design"}]

    replay = ReplayModel(cassette)  # one replay model serves every role
    design = await replay.complete(plan_request("design"))
    assert design.output == PLAN and design.provenance.name == "google:gemini-2.5-pro"
    assert (await replay.complete(plan_request("code"))).output.title == "code"
    assert (await replay.complete(plan_request("code"))).output.title == "code2"
    assert (await replay.complete(plan_request("code"))).output.title == "code2"  # last repeats

    only_coder = ReplayModel(cassette, model_name="openai:gpt-4o")
    assert only_coder.name == "openai:gpt-4o"
    with pytest.raises(CassetteMissError):
        await only_coder.complete(plan_request("design"))


async def test_miss_names_the_hash(tmp_path: Path) -> None:
    cassette = tmp_path / "run.jsonl"
    await RecordingModel(ScriptedModel([PLAN], name="a:b"), cassette).complete(plan_request())
    with pytest.raises(CassetteMissError) as caught:
        await ReplayModel(cassette).complete(plan_request("changed prompt"))
    wanted = plan_request("changed prompt").request_hash("a:b")
    assert caught.value.request_hash == wanted and wanted in str(caught.value)
    assert isinstance(caught.value, LookupError)


async def test_failed_calls_are_not_recorded(tmp_path: Path) -> None:
    cassette = tmp_path / "sub" / "run.jsonl"
    model = RecordingModel(ScriptedModel([ValueError("boom")]), cassette)
    with pytest.raises(ValueError, match="boom"):
        await model.complete(plan_request())
    assert not cassette.exists() and model.recorded == 0
