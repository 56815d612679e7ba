"""The README's code is run, not just read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from swarmbus.agents import Swarm
from swarmbus.protocols import (
    Code,
    Meta,
    SourceFile,
    TaskRequest,
    Work,
    WorkState,
    registry,
)

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    commands = _blocks("bash")[0]
    assert 'python -m pip install -e ".[dev]" && swarmbus demo' in commands
    assert "python -m pytest" in commands
    assert "\npython -m pytest\n" in (ROOT / ".ci" / "run").read_text()


def test_swarm_yaml_example_is_valid(tmp_path: Path) -> None:
    from swarmbus.agents.app import load_config

    yaml_blocks = [b for b in _blocks("yaml") if "roles:" in b]
    assert len(yaml_blocks) >= 2
    for i, block in enumerate(yaml_blocks):
        path = tmp_path / f"swarm{i}.yaml"
        path.write_text(block.replace('agents: ["mycompany.audit:SecurityAuditor"]', "agents: []"))
        cfg = load_config(path, environ={})
        assert set(cfg.roles) <= {"architect", "coder", "reviewer"}


@pytest.mark.anyio
async def test_custom_agent_snippet_runs(nats_url: str, namespace: str) -> None:
    snippet = next(b for b in _blocks("python") if "class SecurityAuditor" in b)
    scope: dict[str, Any] = {"__name__": "readme_snippet"}
    if registry.get("acme.AuditReport/1") is None:
        exec(compile(snippet, "README.md", "exec"), scope)
    else:  # pragma: no cover - re-run in the same process
        pytest.skip("snippet already registered in this process")
    auditor = scope["SecurityAuditor"]()
    code = Code(files=[SourceFile(path="a.py", content="API_KEY = 'x'"),
                       SourceFile(path="b.py", content="print(1)")])
    state = WorkState(task=TaskRequest(goal="g"), artifacts={"code": code.model_dump()})
    msg = Work(state=state, source="implement", output="code")
    async with Swarm([auditor], nats=nats_url, namespace=namespace) as swarm:
        await swarm.bus.publish("wf-readme", "step.review", msg, Meta("readme-1"))
        with anyio.fail_after(10):
            while (stored := await swarm.bus.last("wf-readme", "audit")) is None:
                await anyio.sleep(0.02)
    report = stored.decode().message
    assert report.model_dump()["files"] == 2
    assert report.model_dump()["secrets_found"] == ["a.py"]


@pytest.mark.anyio
async def test_step_agent_snippet_serves_a_step(nats_url: str, namespace: str) -> None:
    from _team_helpers import Script, run_task

    from swarmbus.agents.workflow import compile_workflow, team
    from swarmbus.protocols import Workflow

    snippet = next(b for b in _blocks("python") if "class KeywordAuditor" in b)
    scope: dict[str, Any] = {"__name__": "readme_step_snippet"}
    exec(compile(snippet, "README.md", "exec"), scope)
    wf = compile_workflow(Workflow.parse({
        "name": "readme", "artifacts": {"audit": "swarmbus.Verdict"},
        "steps": [{"role": "architect"}, {"role": "coder", "input": "design"},
                  {"id": "audit", "role": "auditor", "input": "code", "output": "audit",
                   "routes": {"approve": "end", "revise_code": {"to": "coder", "max": 1},
                              "revise_design": "end"}}]}))
    models = Script().models()
    agents = team(wf, models={"architect": models["architect"], "coder": models["coder"]},
                  classes={"auditor": scope["KeywordAuditor"]})
    result, _ = await run_task(nats_url, namespace, agents)
    assert result.status == "approved" and result.reason == "no eval"
