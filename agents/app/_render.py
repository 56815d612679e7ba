"""How the CLI shows workflows: live progress lines, trails, results."""

from __future__ import annotations

from typing import Any

from swarmbus.bus import StoredMessage, WorkflowStatus
from swarmbus.protocols import (
    CodeSubmission,
    DeadLetter,
    DesignSpec,
    Message,
    RevisionRequest,
    TaskRequest,
    TaskResult,
    headers,
)

__all__ = ["progress_line", "render_result", "render_status", "render_trail", "trail_json"]


def _cut(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _cost(prov: Any) -> str:
    if prov is None:
        return "-"
    if prov.cost_usd is None:
        return "unpriced"
    return f"${prov.cost_usd:.4f}" + (" (cache)" if prov.from_cache else "")


def describe(msg: Message) -> str:
    """One line: what this step did."""
    if isinstance(msg, TaskRequest):
        return f"goal: {_cut(msg.goal)}"
    if isinstance(msg, DesignSpec):
        d = msg.state.design
        return f"design: {_cut(d.summary) if d else '-'}"
    if isinstance(msg, CodeSubmission):
        files = msg.state.code.files if msg.state.code else []
        return f"code: {len(files)} files ({', '.join(f.path for f in files)[:60]})"
    if isinstance(msg, RevisionRequest):
        r = msg.state.test_report
        tests = f"tests {r.passed} passed, {r.failed} failed, {r.errors} errors; " if r else ""
        return f"{msg.verdict.decision}: {tests}{_cut(msg.verdict.summary, 50)}"
    if isinstance(msg, TaskResult):
        return f"{msg.status.upper()} after {msg.rounds} rounds, total ${msg.total.cost_usd:.4f}"
    if isinstance(msg, DeadLetter):
        return f"dead letter ({msg.reason}): {_cut(msg.error, 60)}"
    return type(msg).__name__


def render_trail(workflow_id: str, trail: list[StoredMessage]) -> str:
    lines = [f"trail of {workflow_id}: {len(trail)} messages"]
    lines.append(f"  {'#':>3}  {'topic':<13} {'by':<10} {'model':<22} {'cost':<10} what")
    for i, stored in enumerate(trail, 1):
        env = stored.try_decode()
        if env is None:
            lines.append(f"  {i:>3}  {stored.subject.split('.', 3)[-1]:<13} (undecodable)")
            continue
        msg = env.message
        prov = getattr(msg, "provenance", None)
        model = stored.headers.get(headers.MODEL, "-")
        lines.append(
            f"  {i:>3}  {env.topic:<13} {env.sender or '-':<10} {model:<22} {_cost(prov):<10} "
            f"{describe(msg)}"
        )
        findings = msg.verdict.findings if isinstance(msg, RevisionRequest) else []
        for f in findings:
            lines.append(f"{'':>8}- [{f.severity}] -> {f.target}: {f.location}: "
                         f"{_cut(f.explanation, 80)}")
    return "\n".join(lines)


def trail_json(trail: list[StoredMessage]) -> list[dict[str, Any]]:
    out = []
    for stored in trail:
        env = stored.try_decode()
        out.append({
            "seq": stored.seq,
            "subject": stored.subject,
            "headers": stored.headers,
            "type": env.message.swarm_type if env else None,
            "body": env.message.model_dump(mode="json") if env else None,
        })
    return out


def render_result(workflow_id: str, r: TaskResult) -> str:
    lines = [f"{workflow_id}: {r.status}" + (f" ({r.reason})" if r.reason else "")]
    lines.append(f"  rounds {r.rounds}, code revisions {r.code_revisions}, "
                 f"design revisions {r.design_revisions}")
    for role, u in sorted(r.spend.items()):
        lines.append(f"  {role:<10} {u.calls} calls, {u.input_tokens} in / {u.output_tokens} out "
                     f"tokens, ${u.cost_usd:.4f}" + (f" ({u.unpriced_calls} unpriced)"
                                                      if u.unpriced_calls else ""))
    lines.append(f"  total ${r.total.cost_usd:.4f}")
    if r.code:
        lines.append("  files: " + ", ".join(f.path for f in r.code.files))
    if r.test_report:
        t = r.test_report
        lines.append(f"  tests: {t.passed} passed, {t.failed} failed, {t.errors} errors")
    for f in r.findings:
        lines.append(f"  open finding [{f.severity}] {f.location}: {_cut(f.explanation, 80)}")
    return "\n".join(lines)


def render_status(st: WorkflowStatus) -> str:
    if not st.known:
        return f"{st.workflow_id}: unknown (no messages in this namespace)"
    if st.result is not None:
        return render_result(st.workflow_id, st.result)
    return (f"{st.workflow_id}: running; {st.working} working, round {st.round}, "
            f"{st.steps} steps, spent ${st.spent_usd:.4f}")


def progress_line(st: WorkflowStatus) -> str:
    if st.result is not None:
        return f"[{st.workflow_id[:14]}] done: {st.result.status}"
    return (f"[{st.workflow_id[:14]}] round {st.round}: {st.working or 'waiting'} working "
            f"(last: {st.last_topic}), spent ${st.spent_usd:.4f}")
