"""A run that started on a workflow stored by an earlier version finishes on this one,
although this version would write (and hash) the same workflow differently."""

from __future__ import annotations

import hashlib
import json

import anyio
import pytest
from _team_helpers import GOAL, Script, path, team

from swarmbus.agents import Swarm
from swarmbus.agents.workflow import load_workflow
from swarmbus.bus import SwarmClient
from swarmbus.protocols import TaskRequest, Work

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_a_run_on_a_workflow_stored_in_an_older_form_finishes(
    nats_url: str, namespace: str
) -> None:
    wf = load_workflow("builtin:code-review")
    # An earlier version stored every key, defaults included: another text, another hash.
    old_text = json.dumps(wf.spec.model_dump(mode="json", by_alias=True), sort_keys=True,
                          separators=(",", ":"))
    old_hash = hashlib.sha256(old_text.encode()).hexdigest()[:16]
    assert old_hash != wf.hash
    async with (
        Swarm(team(Script(buggy_first=True).models()), nats=nats_url, namespace=namespace,
              grace_s=3),
        await SwarmClient.connect(nats_url, namespace=namespace) as client,
    ):
        store = await client.bus.key_value("workflows")
        await store.put(old_hash, old_text.encode())
        with anyio.fail_after(40):
            wf_id = await client.submit(TaskRequest(goal=GOAL, workflow=old_hash))
            result = await client.result(wf_id)
            trail = await client.trail(wf_id)
    assert result.status == "approved", result.reason
    assert path(trail) == ["task", "design", "implement", "review", "implement", "result"]
    for stored in trail:  # every step named the graph the run started on
        env = stored.decode()
        if isinstance(env.message, Work):
            assert env.message.state.workflow == old_hash
            assert env.meta.workflow == old_hash
    assert result.workflow == old_hash
