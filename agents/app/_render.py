"""How the CLI shows workflows: live progress lines, trails, results."""

from __future__ import annotations

from typing import Any

from swarmbus.bus import StoredMessage, WorkflowStatus
from swarmbus.protocols import (
    Cancel,
    DeadLetter,
    Deadline,
    ItemResult,
    Message,
    Provenance,
    Resume,
    RouteDecision,
    TaskRequest,
    TaskResult,
    Usage,
    Work,
    headers,
    topics,
)

from ..models import cost_text

__all__ = [
    "describe",
    "progress_line",
    "render_result",
    "render_status",
    "render_trail",
    "trail_json",
    "usage_line",
]


def _cut(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def cost(usage: Usage | None) -> str:
    """A step's cost as shown: unknown is never $0, estimates and cache hits say so."""
    if usage is None:
        return "-"
    if usage.calls == 0 and usage.cache_hits == 0:
        return "$0"
    text = f"${usage.priced_cost_usd:.4f}"
    if usage.unpriced_calls:
        text = f"{text}+unpriced" if usage.priced_cost_usd else "unpriced"
    if usage.estimated_calls:
        text = "~" + text
    if usage.cache_hits:
        text += " (cache)"
    return text


def _tokens(usage: Usage | None) -> str:
    if usage is None or (usage.input_tokens == 0 and usage.output_tokens == 0):
        return "-"
    return f"{usage.input_tokens}/{usage.output_tokens}"


def _cache(usage: Usage | None) -> str:
    """Input read from the provider's prompt cache / written to it, in tokens."""
    if usage is None or not (usage.cached_tokens or usage.cache_write_tokens):
        return "-"
    return f"{usage.cached_tokens}/{usage.cache_write_tokens}"


def diff_stat(diff: str) -> str:
    """``N files +a -b`` of a unified diff ('' for none)."""
    if not diff:
        return ""
    lines = diff.splitlines()
    files = sum(1 for line in lines if line.startswith("+++ "))
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++ "))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("--- "))
    return f"{files} file{'s' if files != 1 else ''} changed, +{added} -{removed}"


def route_line(d: RouteDecision) -> str:
    """How a routed step's model was chosen, in one line: the router, the pick and its
    probability, then each candidate's chance of success and expected cost."""
    how = f"explored, p={d.probability:.2f}" if d.explored else f"p={d.probability:.2f}"
    scores = "; ".join(
        f"{s.model} {s.p_success:.2f}" + (f" ${s.cost_usd:.4f}" if s.cost_usd is not None
                                          else " cost ?") for s in d.scores)
    version = f" {d.version}" if d.version else ""
    note = f" ({d.note})" if d.note else ""
    return f"route: {d.router}{version} chose {d.model} ({how}){note}" + (
        f": {scores}" if scores else "")


def _model(prov: Provenance | None, fallback: str) -> str:
    if prov is None:
        return fallback
    return prov.name + (f" (after {', '.join(prov.tried)})" if prov.tried else "")


def _artifact_line(name: str, value: Any) -> str:
    if not isinstance(value, dict):
        return f"{name}: {_cut(str(value))}"
    if "decision" in value:
        return f"{value['decision']}: {_cut(str(value.get('summary', '')), 50)}"
    files = value.get("files")
    if isinstance(files, list) and all(isinstance(f, dict) for f in files):
        paths = ", ".join(str(f.get("path", "?")) for f in files)
        return f"{name}: {len(files)} files ({paths[:60]})"
    for key in ("summary", "text"):
        if isinstance(value.get(key), str):
            return f"{name}: {_cut(value[key])}"
    return name


def describe(msg: Message) -> str:
    """One line: what this step did."""
    if isinstance(msg, TaskRequest):
        return f"goal: {_cut(msg.goal)}"
    if isinstance(msg, Work):
        line = _artifact_line(msg.output, msg.state.artifacts.get(msg.output)) if msg.output \
            else "work"
        changed = diff_stat(msg.state.diffs.get(msg.output, "")) if msg.output else ""
        if changed:
            line += f"; {changed}"
        r = msg.state.test_report
        if r is not None and msg.edge.endswith(".revise_code"):
            line = f"tests {r.passed} passed, {r.failed} failed, {r.errors} errors; {line}"
        return line
    if isinstance(msg, TaskResult):
        return f"{msg.status.upper()} after {msg.rounds} rounds, total {cost(msg.total)}"
    if isinstance(msg, DeadLetter):
        return f"dead letter ({msg.reason}): {_cut(msg.error, 60)}"
    if isinstance(msg, Deadline):
        return f"deadline {msg.at.isoformat(timespec='seconds')}"
    if isinstance(msg, Cancel):
        return "cancel requested" + (f": {_cut(msg.reason, 50)}" if msg.reason else "")
    if isinstance(msg, Resume):
        return f"resumed at step {msg.step!r} (result #{msg.after} superseded)"
    return type(msg).__name__


def render_trail(workflow_id: str, trail: list[StoredMessage], *, diffs: bool = False) -> str:
    """Each message: its topic, sender, model (and models tried before), tokens, prompt
    cache reads/writes, cost; ``diffs``: under a revision of code, its unified diff."""
    lines = [f"trail of {workflow_id}: {len(trail)} messages"]
    lines.append(f"  {'#':>3}  {'step':<22} {'by':<10} {'model':<24} {'tokens':<13} "
                 f"{'cache r/w':<11} {'cost':<14} what")
    for i, stored in enumerate(trail, 1):
        env = stored.try_decode()
        if env is None:
            lines.append(f"  {i:>3}  {stored.subject.split('.', 3)[-1]:<22} (undecodable)")
            continue
        msg = env.message
        usage = msg.usage if isinstance(msg, Work | TaskResult) else None
        prov = msg.provenance if isinstance(msg, Work | TaskResult) else None
        model = _model(prov, stored.headers.get(headers.MODEL, "-"))
        where = env.topic
        if isinstance(msg, Work):
            where = f"{msg.source or 'task'} -> {env.topic.removeprefix('step.')}"
            if msg.item is not None:
                where += f"[{msg.item.key}]"
        elif isinstance(msg, TaskResult) and msg.step:
            where = f"{msg.step} -> result"
        lines.append(
            f"  {i:>3}  {_cut(where, 22):<22} {env.sender or '-':<10} {_cut(model, 24):<24} "
            f"{_tokens(usage):<13} {_cache(usage):<11} {cost(usage):<14} {describe(msg)}"
        )
        findings = []
        if isinstance(msg, Work) and msg.edge and not msg.edge.endswith(".next"):
            findings = msg.state.findings
        if isinstance(msg, Work) and msg.edge.endswith(".join"):
            lines += _items(msg)
        if prov is not None and prov.route is not None:
            lines.append(f"{'':>8}{route_line(prov.route)}")
        if diffs and isinstance(msg, Work) and msg.state.diffs.get(msg.output):
            lines += [f"{'':>8}{line}" for line in msg.state.diffs[msg.output].splitlines()]
        for f in findings:
            lines.append(f"{'':>8}- [{f.severity}] -> {f.target}: {f.location}: "
                         f"{_cut(f.explanation, 80)}")
    return "\n".join(lines)


def _items(work: Work) -> list[str]:
    """A join's items, one line each: how it ended, its model, tokens and cost."""
    value = work.state.artifacts.get(work.output)
    items = value.get("items") if isinstance(value, dict) else None
    if not isinstance(items, list):
        return []  # in the object store: `swarmbus artifact` shows it
    out = []
    for raw in items:
        r = ItemResult[Any].model_validate(raw)
        how = "reused" if r.reused else ("ok" if r.ok else f"failed: {_cut(r.reason, 40)}")
        model = r.provenance.name if r.provenance is not None else "-"
        out.append(f"{'':>8}item {_cut(r.key, 14):<14} {_cut(model, 24):<24} "
                   f"{_tokens(r.usage):<13} {_cache(r.usage):<11} {cost(r.usage):<14} {how}")
    return out


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


def usage_line(u: Usage) -> str:
    """``N calls, in/out tokens, $cost`` with what is unpriced, estimated or cached."""
    notes = []
    if u.unpriced_calls:
        known = u.unpriced_calls < u.calls  # some calls had a price: their sum is shown
        notes.append(f"{u.unpriced_calls} unpriced" + (", not included" if known else ""))
    if u.estimated_calls:
        notes.append(f"{u.estimated_calls} estimated (no usage reported)")
    if u.cache_hits:
        notes.append(f"{u.cache_hits} from cache")
    if u.cached_tokens or u.cache_write_tokens:
        notes.append(f"prompt cache: {u.cached_tokens} read, {u.cache_write_tokens} written")
    return (f"{u.calls} calls, {u.input_tokens} in / {u.output_tokens} out tokens, "
            f"{cost_text(u)}" + (f" ({'; '.join(notes)})" if notes else ""))


def render_result(workflow_id: str, r: TaskResult) -> str:
    lines = [f"{workflow_id}: {r.status}" + (f" ({r.reason})" if r.reason else "")]
    routes = ", ".join(f"{k} {v}" for k, v in sorted(r.routes.items())) or "none"
    backs = ", ".join(f"{k} {v}" for k, v in sorted(r.send_backs.items())) or "none"
    lines.append(f"  rounds {r.rounds}, steps {r.steps}, routes taken: {routes}; "
                 f"sent back to: {backs}")
    for role, u in sorted(r.spend.items()):
        lines.append(f"  {role:<10} {usage_line(u)}")
    lines.append(f"  total      {usage_line(r.total)}")
    if r.code:
        lines.append("  files: " + ", ".join(f.path for f in r.code.files))
    if r.test_report:
        t = r.test_report
        lines.append(f"  tests: {t.passed} passed, {t.failed} failed, {t.errors} errors")
    if r.acceptance:
        a = r.acceptance
        lines.append(f"  hidden acceptance tests: {'passed' if a.ok else 'FAILED'} "
                     f"({a.passed} passed, {a.failed} failed, {a.errors} errors)")
    for f in r.findings:
        lines.append(f"  open finding [{f.severity}] {f.location}: {_cut(f.explanation, 80)}")
    return "\n".join(lines)


def _doing(st: WorkflowStatus, namespace: str) -> str:
    if st.stalled:
        return f"stalled: {st.stalled}" + (f" ({st.role} holds its work)" if st.role else "")
    if st.live is False:
        of = st.consumer.partition("@")[2]
        return (f"waiting: no {st.role} is running in namespace {namespace}"
                + (f" for workflow {of}" if of else ""))
    if st.role:
        return f"{st.role} working" + (f" on {st.step}" if st.step else "")
    if st.last_topic == topics.TASK and not st.workflow:
        return f"waiting: no swarm has started in namespace {namespace} yet"
    return "waiting"


def render_status(st: WorkflowStatus, namespace: str = "default") -> str:
    if not st.known:
        return f"{st.workflow_id}: unknown (no messages in namespace {namespace})"
    if st.result is not None:
        return render_result(st.workflow_id, st.result)
    return (f"{st.workflow_id}: running; {_doing(st, namespace)}, round {st.round}, "
            f"{st.steps} messages, spent {cost_text(st.spent)}")


def progress_line(st: WorkflowStatus, namespace: str = "default") -> str:
    if st.result is not None:
        return f"[{st.workflow_id[:14]}] done: {st.result.status}"
    return (f"[{st.workflow_id[:14]}] round {st.round}: {_doing(st, namespace)}, "
            f"spent {cost_text(st.spent)}")
