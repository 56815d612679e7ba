"""A workflow's graph as text and as Mermaid (``swarmbus workflow show``)."""

from __future__ import annotations

from collections.abc import Collection

from swarmbus.protocols import END, CompiledWorkflow

__all__ = ["mermaid", "show_text"]


def _edges(wf: CompiledWorkflow) -> list[tuple[str, str, str, int | None, str]]:
    """(from, to, label, cap, key) for every edge; ``key`` names it as a run counts it
    (``'<step>.<route>'``: ``.next`` without routes, ``.join`` after a fan-out)."""
    out: list[tuple[str, str, str, int | None, str]] = []
    for s in wf.spec.steps:
        if not s.routes:
            join = wf.steps.get(wf.joins.get(s.id, ""))
            label = (f"join (min_ok {join.min_ok})" if join is not None and join.min_ok
                     is not None else "join") if s.for_each is not None else ""
            out.append((s.id, wf.successor(s.id), label, None,
                        f"{s.id}.join" if s.for_each is not None else f"{s.id}.next"))
        for key, edge in s.routes.items():
            ends = f" (ends {edge.status})" if edge.to == END and edge.status != "approved" \
                else ""
            out.append((s.id, edge.to, f"{s.route_on}={key}{ends}", edge.max, f"{s.id}.{key}"))
    return out


def show_text(wf: CompiledWorkflow) -> str:
    """Steps (role, model, inputs -> output, tools) and edges with their caps."""
    lines = [f"workflow {wf.name} ({wf.hash})" + (f": {wf.spec.description}"
                                                  if wf.spec.description else "")]
    lines.append("steps:")
    for s in wf.spec.steps:
        ins = " + ".join(s.input) or "task"
        typ = wf.spec.artifacts.get(s.output or "", "")
        out = f"{s.output} ({typ})" if s.output else "-"
        model = f", model {_model_text(s.model)}" if s.model is not None else ""
        tools = f", tools {', '.join(s.tool_names)}" if s.tools else ""
        each = ""
        if s.for_each is not None:
            limits = [f"{k} {v}" for k, v in (("max_parallel", s.max_parallel),
                                              ("max_items", s.max_items)) if v is not None]
            if s.rerun != "all":
                limits.append(f"rerun {s.rerun}")
            each = f", for each {s.as_} in {s.for_each}" + (
                f" ({', '.join(limits)})" if limits else "")
        lines.append(f"  {s.id:<14} role {s.role}{model}: {ins} -> {out}{tools}{each}")
    lines.append("edges:")
    for a, b, label, cap, _key in _edges(wf):
        capped = f" (max {cap})" if cap is not None else ""
        lines.append(f"  {a} -> {b}" + (f" [{label}]" if label else "") + capped)
    return "\n".join(lines)


def mermaid(wf: CompiledWorkflow, *, taken: Collection[str] = (), ran: Collection[str] = (),
            now: str = "") -> str:
    """A Mermaid flowchart of the workflow. For a run (``swarmbus ui``): ``taken`` edges
    (``'<step>.<route>'``, as ``WorkState.edges`` counts them; ``'<step>.next'`` for a step
    without routes, ``'<step>.join'`` for a fan-out's) are drawn thick, ``ran`` steps
    filled, and the step ``now`` waiting or running outlined."""
    def node(step: str) -> str:  # Mermaid reserves `end`; prefixing keeps every id legal
        if step == END:
            return "finish"
        return "s_" + "".join(c if c.isalnum() or c == "_" else f"_{ord(c):x}_" for c in step)

    lines = ["flowchart TD", "  start([task]) --> " + node(wf.entry.id)]
    for s in wf.spec.steps:
        if s.for_each is not None:  # a stack of boxes: one run per item
            each = f"for each {s.as_} in {s.for_each}"
            lines.append(f'  {node(s.id)}[["{s.id}<br/><small>{s.role}: {each}</small>"]]')
        elif s.join is not None:
            lines.append(f'  {node(s.id)}{{{{"{s.id}<br/><small>{s.role}: joins '
                         f'{s.join}</small>"}}}}')
        else:
            lines.append(f'  {node(s.id)}["{s.id}<br/><small>{s.role}</small>"]')
    lines.append(f"  {node(END)}([end])")
    thick = [0] if ran or taken else []  # link 0: the task to the entry step
    for i, (a, b, label, cap, key) in enumerate(_edges(wf), start=1):
        text = label + (f" max {cap}" if cap is not None else "")
        arrow = f" -->|{text}| " if text else " --> "
        lines.append(f"  {node(a)}{arrow}{node(b)}")
        if key in taken:
            thick.append(i)
    if thick:
        lines.append(f"  linkStyle {','.join(map(str, thick))} stroke:#1a7f37,stroke-width:3px")
    if ran or now:
        lines += ["  classDef ran fill:#dafbe1,stroke:#1a7f37",
                  "  classDef now stroke:#bf8700,stroke-width:3px,stroke-dasharray:4 2"]
        done = [node(s) for s in wf.steps if s in ran]
        if done:
            lines.append(f"  class {','.join(done)} ran")
        if now in wf.steps:
            lines.append(f"  class {node(now)} now")
    return "\n".join(lines)


def _model_text(model: object) -> str:
    """A step's model as ``show`` prints it: a name, a spec's name, a chain, or a route
    (``route by rule among a | b``)."""
    if isinstance(model, str):
        return model
    if isinstance(model, list):
        return " -> ".join(_model_text(m) for m in model)
    if isinstance(model, dict):
        if isinstance(model.get("route"), dict):
            route = model["route"]
            among = " | ".join(_model_text(c) for c in route.get("candidates", []))
            return f"route by {route.get('router', 'rule')} among {among}"
        if "fallback" in model:
            return _model_text(model["fallback"])
        if "name" in model:
            return str(model["name"])
    return str(model)
