"""Routed steps on a real nats-server: the model a step runs on is chosen per run, before
its first call, by the workflow's router (rules, a baseline, or a trained router read
from the namespace's bucket), kept for the run's later rounds and the same on a
redelivery, recorded with its propensity in provenance and the trail, and exported
with the run's outcome as training data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from _run_helpers import CALL_USD, billed, flow, prompt_of, run_cli, run_one
from pydantic import BaseModel

from swarmbus.agents import Swarm
from swarmbus.agents.app import render_trail
from swarmbus.agents.models import (
    Model,
    ModelConfig,
    ModelRequest,
    ProviderError,
    RoutedModel,
    RouteSpec,
    build_model,
)
from swarmbus.agents.routing import Features, OutcomeRow, load_router, read_outcomes, train_knn
from swarmbus.agents.workflow import ROUTERS_BUCKET, StepAgent, StepCall, outcome_rows, team
from swarmbus.bus import Bus, ConsumerSettings, SwarmClient
from swarmbus.protocols import (
    Code,
    CompiledWorkflow,
    Finding,
    Review,
    SourceFile,
    TaskRequest,
    Work,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

CHEAP, STRONG = "t:cheap", "t:strong"
CODE = Code(files=[SourceFile(path="calc.py", content="def add(a, b):\n    return a + b\n")])


def routed(route: dict[str, Any], *, revise_once: bool = True) -> CompiledWorkflow:
    """implement (routed) -> check, which sends it back once, then approves."""
    check: dict[str, Any] = {"id": "check", "role": "checker", "input": "code",
                             "output": "review", "routes": {"approve": "end", "revise": {
                                 "to": "implement", "max": 3}}}
    return flow({"name": "routed", "artifacts": {"code": "swarmbus.Code",
                                                 "review": "swarmbus.Review"},
                 "steps": [{"id": "implement", "role": "coder", "output": "code",
                            "model": {"route": route}}, check]})


class Calls:
    """Candidates that record which of them answered, and a checker that sends the first
    code of each run back once."""

    def __init__(self) -> None:
        self.by: list[str] = []
        self.checked: dict[str, int] = {}

    def candidate(self, name: str) -> Model:
        def answer(_r: ModelRequest[Any]) -> Code:
            self.by.append(name)
            return CODE
        return billed(answer, name)

    def build(self, config: ModelConfig) -> Model:
        assert isinstance(config, RouteSpec)
        return RoutedModel(config.route, {n: self.candidate(n) for n in config.route.candidates})

    def checker(self, request: ModelRequest[Any]) -> Review:
        key = prompt_of(request).split("## Goal\n\n", 1)[1].split("\n", 1)[0]
        self.checked[key] = self.checked.get(key, 0) + 1
        if self.checked[key] == 1:
            return Review(decision="revise", summary="again", findings=[Finding(
                severity="minor", target="coder", explanation="once more")])
        return Review(decision="approve", summary="fine")


def agents(wf: CompiledWorkflow, calls: Calls) -> list[Any]:
    return team(wf, models={"checker": billed(calls.checker, "t:checker")}, build=calls.build,
                tools={})


def decisions(trail: list[Any]) -> list[Any]:
    out = []
    for stored in trail:
        env = stored.decode()
        if isinstance(env.message, Work) and env.message.source == "implement":
            assert env.message.provenance is not None
            out.append(env.message.provenance.route)
    return out


async def test_rules_choose_before_the_first_call_and_the_run_keeps_the_choice(
    nats_url: str, namespace: str
) -> None:
    calls = Calls()
    wf = routed({"candidates": [STRONG, CHEAP], "router": "rule", "rules": [
        {"if": {"round": {"ge": 2}}, "use": STRONG}, {"use": CHEAP}]})
    result, trail = await run_one(agents(wf, calls), nats_url, namespace,
                                  TaskRequest(goal="Write add"))
    assert result.status == "approved", result.reason
    # Round 2's rule would pick the strong one: the run keeps what it chose (its cache).
    assert calls.by == [CHEAP, CHEAP]
    first, second = decisions(trail)
    assert first == second and first.model == CHEAP and first.router == "rule"
    assert first.probability == 1.0 and not first.explored
    assert first.features["goal"] == "Write add" and first.features["round"] == 1
    assert result.spend["coder"].cost_usd == 2 * CALL_USD
    assert "route: rule 1 chose t:cheap (p=1.00)" in render_trail("wf1", trail)


class LosesFirstAnswer(StepAgent):
    """A coder whose first answer in each run is lost after its model gave it (a
    transient error): the step is delivered again and decides again."""

    lost: set[str] = set()

    async def perform(self, call: StepCall) -> BaseModel:
        output = await call.ask()
        if call.ctx.workflow_id not in LosesFirstAnswer.lost:
            LosesFirstAnswer.lost.add(call.ctx.workflow_id)
            raise ProviderError("the answer was lost", model="t")
        return output


async def test_exploration_records_its_propensity_and_a_redelivery_decides_the_same(
    nats_url: str, namespace: str
) -> None:
    calls = Calls()
    wf = routed({"candidates": [STRONG, CHEAP], "router": "best", "explore": 0.5})
    fast = ConsumerSettings(retry_delay_s=0.05, ack_wait_s=30, max_deliver=3)
    swarm = team(wf, models={"checker": billed(calls.checker, "t:checker")}, build=calls.build,
                 tools={}, classes={"coder": LosesFirstAnswer}, consumers={"coder": fast})
    seen: dict[str, Any] = {}
    async with Swarm(swarm, nats=nats_url, namespace=namespace, grace_s=3), \
            await SwarmClient.connect(nats_url, namespace=namespace) as client:
        for i in range(10):
            before = len(calls.by)
            await client.submit(TaskRequest(goal=f"Write add {i}"), workflow_id=f"run{i}")
            result = await client.result(f"run{i}", timeout_s=30)
            assert result.status == "approved", result.reason
            lost, redelivered, second_round = calls.by[before:]
            d, again = decisions(await client.trail(f"run{i}"))
            assert lost == redelivered == second_round == d.model  # the same every time
            assert d == again
            seen[f"run{i}"] = d
    explored = [d for d in seen.values() if d.explored]
    assert 0 < len(explored) < 10  # a coin of 0.5 per run (seeded by the run: repeatable)
    for d in seen.values():
        assert d.probability == 0.5  # 1 - 0.5 for the best one, 0.5 / 1 for the other
        assert d.model == (CHEAP if d.explored else STRONG)
        assert d.router == "best" and [s.model for s in d.scores] == [STRONG, CHEAP]


def rows(winner: str, loser: str, n: int = 40) -> list[OutcomeRow]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        f = Features(workflow="routed", step="implement", role="coder",
                     goal=f"Write add number {i}", constraints=[], language=None,
                     input_chars=100 + i, round=1, open_findings=0, budget_left_usd=1.0)
        for model, ok in ((winner, True), (loser, False)):
            out.append(OutcomeRow(at=start + timedelta(minutes=i), workflow_id=f"r{i}",
                                  workflow="routed", step="implement", model=model,
                                  features=f, approved=ok, rounds=1, cost_usd=0.01,
                                  latency_s=1.0, propensity=0.5))
    return out


async def put_router(bus: Bus, name: str, text: str) -> None:
    store = await bus.key_value(ROUTERS_BUCKET)
    await store.put(name, text.encode())


async def test_a_trained_router_in_the_bucket_routes_and_a_new_version_needs_no_restart(
    nats_url: str, namespace: str
) -> None:
    calls = Calls()
    wf = routed({"candidates": [CHEAP, STRONG], "router": "coder-router",
                 "willingness_to_pay_usd": 10.0})
    async with Swarm(agents(wf, calls), nats=nats_url, namespace=namespace, grace_s=3), \
            await SwarmClient.connect(nats_url, namespace=namespace) as client:
        async def run(wf_id: str) -> Any:
            await client.submit(TaskRequest(goal="Write add number 3"), workflow_id=wf_id)
            result = await client.result(wf_id, timeout_s=30)
            assert result.status == "approved", result.reason
            return decisions(await client.trail(wf_id))[0]

        before = await run("none-yet")  # nothing stored: the rules (none: always-best)
        assert before.router == "best" and before.model == CHEAP
        assert before.note == "no trained router 'coder-router' is stored yet: always-best chose"
        await put_router(client.bus, "coder-router", train_knn(rows(STRONG, CHEAP)).to_json())
        first = await run("v1")
        assert (first.router, first.model, first.note) == ("coder-router", STRONG, "")
        assert first.version.startswith("knn ")
        scores = {s.model: s.p_success for s in first.scores}
        assert scores[STRONG] > scores[CHEAP]
        await put_router(client.bus, "coder-router", train_knn(rows(CHEAP, STRONG)).to_json())
        second = await run("v2")  # the same daemon, a new version
        assert (second.router, second.model) == ("coder-router", CHEAP)
        assert second.version != first.version
        # A router that does not load, or that never saw these candidates: the rules stand
        # in (none here: always-best), and the decision says why.
        await put_router(client.bus, "coder-router", '{"schema": "broken')
        broken = await run("broken")
        assert (broken.router, broken.model) == ("best", CHEAP)
        assert "the stored router 'coder-router' (bucket 'routers', revision" in broken.note
        assert "does not load" in broken.note
        other = [r.model_copy(update={"model": r.model.replace("t:", "x:")})
                 for r in rows(STRONG, CHEAP)]
        await put_router(client.bus, "coder-router", train_knn(other).to_json())
        strangers = await run("strangers")
        assert (strangers.router, strangers.model) == ("best", CHEAP)
        assert "has no data on t:cheap, t:strong" in strangers.note


async def test_a_run_of_one_routed_step_is_exported(nats_url: str, namespace: str) -> None:
    calls = Calls()
    wf = flow({"name": "solo", "artifacts": {"code": "swarmbus.Code"},
               "steps": [{"id": "implement", "role": "coder", "output": "code",
                          "model": {"route": {"candidates": [STRONG, CHEAP]}}}]})
    result, _ = await run_one(team(wf, models={}, build=calls.build, tools={}), nats_url,
                              namespace, TaskRequest(goal="Write add", constraints=["pure"]))
    assert result.status == "approved", result.reason
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        (row,) = await outcome_rows(bus)
    assert (row.step, row.model, row.approved, row.cost_usd) == (
        "implement", STRONG, True, CALL_USD)
    assert row.features.goal == "Write add" and row.features.constraints == ["pure"]
    assert row.features.input_chars == len("Write add") + len("pure")


async def test_outcomes_are_exported_one_row_per_run_step_and_model(
    nats_url: str, namespace: str
) -> None:
    calls = Calls()
    wf = routed({"candidates": [STRONG, CHEAP], "router": "best"})
    await run_one(agents(wf, calls), nats_url, namespace, TaskRequest(goal="Write add"))
    bus = await Bus.connect(nats_url, namespace=namespace)
    async with bus:
        got = await outcome_rows(bus, k_rounds=3)
    by_step = {r.step: r for r in got}
    assert set(by_step) == {"implement", "check"}
    coder = by_step["implement"]
    assert (coder.model, coder.approved, coder.rounds) == (STRONG, True, 2)
    assert coder.cost_usd == 2 * CALL_USD and coder.propensity == 1.0
    assert coder.features.goal == "Write add" and coder.features.workflow == "routed"
    check = by_step["check"]  # it ended the run: its last round is in the result
    assert check.model == "t:checker" and check.propensity is None
    assert check.cost_usd == 2 * CALL_USD and check.rounds == 2
    assert check.features.role == "checker" and check.features.workflow == "routed"
    async with await Bus.connect(nats_url, namespace=namespace) as again:
        assert await outcome_rows(again, k_rounds=1) != got  # 2 rounds > 1: not approved
        assert not any(r.approved for r in await outcome_rows(again, k_rounds=1))


def test_a_route_is_checked_like_any_model(fake_keys: str) -> None:
    good = ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"]
    built = build_model(RouteSpec.model_validate({"route": {"candidates": good}}))
    assert isinstance(built, RoutedModel) and list(built.candidates) == good
    for route, words in (
        ({"candidates": good, "rules": [{"if": {"colour": {"eq": 1}}, "use": good[0]}]},
         "colour"),
        ({"candidates": good, "rules": [{"use": "openai:gpt-5"}]}, "openai:gpt-5"),
        ({"candidates": [good[0], good[0]]}, "twice"),
        ({"candidates": good, "best": "openai:o3"}, "best"),
    ):
        with pytest.raises(Exception) as caught:
            build_model(RouteSpec.model_validate({"route": route}))
        assert words in str(caught.value), (route, caught.value)
    with pytest.raises(ValueError, match="candidates"):
        RouteSpec.model_validate({"route": {"candidates": good[:1]}})


async def test_train_stores_a_router_only_when_it_wins_and_export_writes_rows(
    nats_url: str, namespace: str, tmp_path: Path
) -> None:
    from swarmbus.agents.routing import SYNTHETIC_RULES, synthetic_rows, write_outcomes

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(SYNTHETIC_RULES))
    many = write_outcomes(synthetic_rows(2000, seed=0), tmp_path / "many.jsonl")
    few = write_outcomes(synthetic_rows(40, seed=0), tmp_path / "few.jsonl")
    where = ("--nats", nats_url, "--namespace", namespace)
    code, out, err = await anyio.to_thread.run_sync(lambda: run_cli(
        "route", "train", str(few), "--name", "r1", "--rules", str(rules), "--activate",
        *where))
    assert code == 1 and "learned: not activated: too little data" in out, (out, err)
    assert "'r1' is not stored" in err
    code, out, err = await anyio.to_thread.run_sync(lambda: run_cli(
        "route", "train", str(many), "--name", "r1", "--rules", str(rules), "--activate",
        *where))
    assert code == 0, (out, err)
    assert "learned: activated" in out and "stored router 'r1' (learned" in out
    for name in ("learned", "knn", "rule", "random", "cheapest", "best", "oracle"):
        assert f"| {name} " in out
    async with await Bus.connect(nats_url, namespace=namespace) as bus:
        stored = await (await bus.key_value(ROUTERS_BUCKET)).get("r1")
    assert stored is not None and load_router(stored.decode()).name == "learned"

    calls = Calls()
    await run_one(agents(routed({"candidates": [STRONG, CHEAP], "router": "best"}), calls),
                  nats_url, namespace, TaskRequest(goal="Write add"))
    code, out, err = await anyio.to_thread.run_sync(lambda: run_cli(
        "route", "export", "-o", str(tmp_path / "rows.jsonl"), *where))
    assert code == 0, err
    exported = read_outcomes(tmp_path / "rows.jsonl")
    assert {(r.step, r.model) for r in exported} == {("implement", STRONG),
                                                     ("check", "t:checker")}


def test_workflow_show_prints_a_route_as_its_router_and_candidates(tmp_path: Path) -> None:
    file = tmp_path / "r.yaml"
    file.write_text("artifacts: {t: swarmbus.Text}\nsteps:\n- {id: w, role: writer, output: t, "
                    "model: {route: {candidates: [openai:gpt-4o, {name: openai:gpt-4o-mini}], "
                    "router: cheapest}}}\n")
    code, out, err = run_cli("workflow", "show", str(file))
    assert code == 0, err
    assert "model route by cheapest among openai:gpt-4o | openai:gpt-4o-mini" in out


async def test_a_routed_step_that_fails_names_the_model_its_router_chose(
    nats_url: str, namespace: str
) -> None:
    def refuses(_r: ModelRequest[Any]) -> Code:
        raise ProviderError("bad request", model=STRONG, permanent=True)

    def build(config: ModelConfig) -> Model:
        assert isinstance(config, RouteSpec)
        return RoutedModel(config.route, {STRONG: billed(refuses, STRONG),
                                          CHEAP: billed(lambda _r: CODE, CHEAP)})

    wf = routed({"candidates": [STRONG, CHEAP], "router": "best"})
    result, _ = await run_one(team(wf, models={"checker": billed(Calls().checker, "t:c")},
                                   build=build, tools={}),
                              nats_url, namespace, TaskRequest(goal="Write add"))
    assert result.status == "failed"
    assert f"step 'implement' (coder, {STRONG})" in result.reason, result.reason


def test_a_role_routed_in_swarm_yaml_refuses_a_misspelt_router(fake_keys: str) -> None:
    with pytest.raises(Exception, match="did you mean 'cheapest'"):
        build_model(RouteSpec.model_validate({"route": {
            "candidates": ["openai:gpt-4o-mini", "openai:gpt-4o"], "router": "cheapset"}}))
