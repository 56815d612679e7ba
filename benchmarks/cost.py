"""Cost per task, today's way against the new way, on each vendor (issue 21, item 4).

    python benchmarks/cost.py [--vendors anthropic,openai,google] [--out FILE] [--calls]

The built-in workflow (``builtin:code-review``: architect -> coder -> reviewer with
``sandbox.pytest``) on one realistic task (``_cost_task.py``: a design of about 1,500
tokens, code of about 3,000 in six files of real Python with pytest tests, the review
sending the work back to the coder twice and to the architect once before it
approves: 10 model calls over 4 rounds). The models are scripted, but every call goes
through the real adapter and the vendor's own SDK (``build_model(ModelSpec(...))``) to
a loopback fake that bills like the vendor (``_billing.py``), on a real nats-server
(the embedded one unless ``--nats``) with the real sandbox running the tests.

Each vendor (all three roles on it) runs the task twice:

- ``old``: today's way before issue 21: a copy of the built-in workflow file with
  ``revise: whole`` on the coder's step (every round sends every file) and
  ``prompt_cache: off`` on the models (no Anthropic breakpoint, no
  ``prompt_cache_key``);
- ``new``: the defaults (a later round of the coder is asked for ``CodeEdits``; the
  work is sent in sections with breakpoints and a ``prompt_cache_key``).

The scripted coder answers what it is asked: edits (a few search/replace blocks
copied from the code as it is) for ``CodeEdits``, every file whole for ``Code``; both
ways end with the same code (checked). Printed per vendor: the cost per task from the
``TaskResult`` (swarmbus's own books) and from the fake's bill (prices.json applied to
the usage it reported: the two must agree), input and output tokens, the share of
input billed at cached rates, cache writes, the cost by role; then new / old.
Targets: new / old <= 0.65 on each vendor, and at least 15% of Claude's input read
from cache the new way. The last line is ``cost per task, new / old: X.XXx (worst
vendor)``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import structlog
from _billing import BYTES_PER_TOKEN, MIN_PREFIX, Meter, output_name
from _common import env_line, fmt_table, run
from _cost_task import CONSTRAINTS, DESIGNS, EDITS, GOAL, VERDICTS, code_versions

from swarmbus.agents import Swarm
from swarmbus.agents.models import Model, ModelSpec, block_real_models, build_model
from swarmbus.agents.workflow import load_workflow, team
from swarmbus.bus import EmbeddedServer, SwarmClient
from swarmbus.protocols import Code, CompiledWorkflow, TaskRequest, TaskResult

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _vendor_fakes import FakeServer, Seen

VENDORS = {"anthropic": "anthropic:claude-sonnet-4-5", "openai": "openai:gpt-4o",
           "google": "google:gemini-2.5-pro"}
WAYS = ("old", "new")
ROLES = ("architect", "coder", "reviewer")
EXPECTED_CALLS = {"architect": 2, "coder": 4, "reviewer": 4}
KEY_ENV = "SWARMBUS_BENCH_FAKE_KEY"
TARGET_RATIO = 0.65
TARGET_CLAUDE_CACHED = 0.15


# -- the two workflows -----------------------------------------------------------------------


def workflows(folder: Path) -> dict[str, CompiledWorkflow]:
    """``new``: the built-in workflow as shipped; ``old``: a copy of its file (prompts
    included) whose coder step says ``revise: whole``. Nothing else differs (checked)."""
    builtin = Path(str(importlib.resources.files("swarmbus.agents.workflow") / "builtin"))
    shutil.copytree(builtin, folder, dirs_exist_ok=True)
    path = folder / "code-review.yaml"
    text = path.read_text()
    step = "    prompt: prompts/coder.md\n    input: design\n    output: code\n"
    if text.count(step) != 1:
        raise SystemExit(f"the built-in {path.name} changed: cannot find the coder step")
    path.write_text(text.replace(step, step + "    revise: whole\n"))
    new, old = load_workflow("builtin:code-review"), load_workflow(path)
    same = [s.model_copy(update={"revise": None}) for s in old.spec.steps] == new.spec.steps
    if not same or old.steps["implement"].revise != "whole":
        raise SystemExit("the old workflow differs from the built-in one by more than revise")
    return {"old": old, "new": new}


# -- the scripted team -----------------------------------------------------------------------


@dataclass
class Script:
    """The scripted answers of one task: by role, in order (``_cost_task``)."""

    versions: list[Code] = field(default_factory=code_versions)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (role, type asked for)

    def answer(self, seen: Seen) -> str:
        text = seen.prompt_text()
        role = next((r for r in ROLES if f"You are the {r}" in text), "")
        asked = output_name(seen)
        n = sum(1 for r, _ in self.calls if r == role)
        self.calls.append((role, asked))
        if role == "architect":
            return DESIGNS[min(n, len(DESIGNS) - 1)].model_dump_json()
        if role == "reviewer":
            return VERDICTS[min(n, len(VERDICTS) - 1)].model_dump_json()
        if role == "coder":
            k = min(n, len(self.versions) - 1)
            if asked == "CodeEdits" and k > 0:
                return EDITS[k - 1].model_dump_json()
            return self.versions[k].model_dump_json()  # every file whole
        raise ValueError(f"a request of no known role (asks for {asked!r})")


# -- one task ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    vendor: str
    way: str
    result: TaskResult
    meter: Meter
    calls: list[tuple[str, str]]
    wall_s: float

    def role_usd(self, role: str) -> float:
        return sum(b.usd for (r, _), b in zip(self.calls, self.meter.bills, strict=False)
                   if r == role)


async def one_task(url: str, fake: FakeServer, vendor: str, way: str,
                   workflow: CompiledWorkflow, a: argparse.Namespace) -> Outcome:
    name = VENDORS[vendor]
    meter, script = Meter(vendor, name, schema_first=not a.schema_last), Script()
    fake.responder = lambda seen: meter.reply(seen, script.answer(seen))
    base = fake.url + ("/v1" if vendor == "openai" else "")
    models: dict[str, Model] = {role: build_model(ModelSpec(
        name=name, base_url=base, api_key_env=KEY_ENV,
        prompt_cache="off" if way == "old" else "5m")) for role in ROLES}
    ns = f"cost{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    async with (Swarm(team(workflow, models=models), nats=url, namespace=ns, grace_s=3),
                await SwarmClient.connect(url, namespace=ns) as client):
        wf = await client.submit(TaskRequest(goal=GOAL, constraints=CONSTRAINTS))
        result = await client.result(wf, timeout_s=a.timeout)
    return Outcome(vendor, way, result, meter, list(script.calls), time.monotonic() - t0)


def check(o: Outcome, final: dict[str, str]) -> list[str]:
    """What makes a run not the scenario: its status, its calls, its final code."""
    bad = []
    if o.result.status != "approved":
        bad.append(f"status {o.result.status}: {o.result.reason}")
    counts = {r: sum(1 for c, _ in o.calls if c == r) for r in ROLES}
    if counts != EXPECTED_CALLS:
        bad.append(f"calls {counts}, expected {EXPECTED_CALLS}")
    code = o.result.artifacts.get("code")
    files = {f.path: f.content for f in Code.model_validate(code).files} if code else {}
    if files != final:
        bad.append("the final code is not the scenario's last version")
    t, billed = o.result.total, o.meter.total()
    books = (t.input_tokens, t.output_tokens, t.cached_tokens, t.cache_write_tokens)
    fake = (billed.input, billed.output, billed.cached, billed.write_5m + billed.write_1h)
    if books != fake:
        bad.append(f"tokens (input, output, cached, written) booked {books}, billed {fake}")
    asked = [kind for r, kind in o.calls if r == "coder"]
    want = ["Code"] * 4 if o.way == "old" else ["CodeEdits"] * 4  # one type every round
    if asked != want:
        bad.append(f"the coder was asked for {asked}, expected {want}")
    return bad


# -- the report --------------------------------------------------------------------------------


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def vendor_table(old: Outcome, new: Outcome) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}x" if a else "-"

    rows = [[VENDORS[old.vendor], "old", "new", "new/old"]]
    cost = [o.result.total.cost_usd or 0.0 for o in (old, new)]
    bill = [o.meter.total() for o in (old, new)]
    t = [o.result.total for o in (old, new)]
    rows.append(["cost per task (USD, TaskResult.total)", f"{cost[0]:.4f}", f"{cost[1]:.4f}",
                 ratio(*cost)])
    rows.append(["cost per task (USD, the fake's bill)", f"{bill[0].usd:.4f}",
                 f"{bill[1].usd:.4f}", ratio(bill[0].usd, bill[1].usd)])
    rows.append(["input tokens", f"{t[0].input_tokens:,}", f"{t[1].input_tokens:,}",
                 ratio(t[0].input_tokens, t[1].input_tokens)])
    rows.append(["output tokens", f"{t[0].output_tokens:,}", f"{t[1].output_tokens:,}",
                 ratio(t[0].output_tokens, t[1].output_tokens)])
    rows.append(["input billed at cached rates", share(t[0].cached_tokens, t[0].input_tokens),
                 share(t[1].cached_tokens, t[1].input_tokens), ""])
    rows.append(["cache writes (tokens)", f"{t[0].cache_write_tokens:,}",
                 f"{t[1].cache_write_tokens:,}", ""])
    for role in ROLES:
        a, b = old.role_usd(role), new.role_usd(role)
        rows.append([f"  {role} (USD, {EXPECTED_CALLS[role]} calls)", f"{a:.4f}", f"{b:.4f}",
                     ratio(a, b)])
    return fmt_table(rows)


def calls_table(o: Outcome) -> str:
    rows = [[f"{o.vendor} {o.way}: call", "asks for", "input", "cached", "written", "output",
             "USD"]]
    n: dict[str, int] = {}
    for (role, asked), b in zip(o.calls, o.meter.bills, strict=False):
        n[role] = n.get(role, 0) + 1
        rows.append([f"{role} {n[role]}", asked, f"{b.input:,}", f"{b.cached:,}",
                     f"{b.write_5m + b.write_1h:,}", f"{b.output:,}", f"{b.usd:.4f}"])
    return fmt_table(rows)


def report(outcomes: dict[tuple[str, str], Outcome], vendors: list[str], calls: bool) -> str:
    out: list[str] = []
    ratios: dict[str, float] = {}
    for v in vendors:
        old, new = outcomes[v, "old"], outcomes[v, "new"]
        out += ["", vendor_table(old, new)]
        if calls:
            out += ["", calls_table(old), "", calls_table(new)]
        ratios[v] = (new.result.total.cost_usd or 0.0) / (old.result.total.cost_usd or 1.0)
    out += ["", "new / old per vendor: " + ", ".join(f"{v} {r:.3f}x" for v, r in ratios.items())]
    worst = max(ratios, key=lambda v: ratios[v])
    met = all(r <= TARGET_RATIO for r in ratios.values())
    line = (f"target: new / old <= {TARGET_RATIO:.2f}x on each vendor: "
            + ("MET" if met else "MISSED (" + ", ".join(
                f"{v} {r:.3f}x, {r - TARGET_RATIO:+.3f}" for v, r in ratios.items()
                if r > TARGET_RATIO) + ")"))
    out.append(line)
    if "anthropic" in vendors:
        t = outcomes["anthropic", "new"].result.total
        got = t.cached_tokens / t.input_tokens if t.input_tokens else 0.0
        met = got >= TARGET_CLAUDE_CACHED
        out.append(f"target: Claude's input read from cache (new) >= "
                   f"{TARGET_CLAUDE_CACHED:.0%}: {'MET' if met else 'MISSED'} ({got:.1%}"
                   + ("" if met else f", {100 * (got - TARGET_CLAUDE_CACHED):+.1f} points")
                   + ")")
    out += [
        "note: OpenAI's automatic cache is billed for any repeated prefix here (every request "
        "taken to reach the machine holding it); prompt_cache_key only raises the odds of that "
        "on the real service, so its effect cannot be measured offline.",
        f"cost per task, new / old: {ratios[worst]:.2f}x (worst vendor)",
    ]
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------------


async def bench(a: argparse.Namespace, vendors: list[str], say: Callable[[str], None]) -> bool:
    """Every vendor's two runs, then the report (through ``say``); False if a run was not
    the scenario or its two bills disagree."""
    final = {f.path: f.content for f in code_versions()[-1].files}
    server = None if a.nats else EmbeddedServer().start_blocking()
    url = a.nats or server.url  # type: ignore[union-attr]
    outcomes: dict[tuple[str, str], Outcome] = {}
    problems: list[str] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="cost-wf-") as tmp, \
                FakeServer() as fake, block_real_models(False):
            flows = workflows(Path(tmp))
            for v in vendors:
                for way in WAYS:
                    o = await one_task(url, fake, v, way, flows[way], a)
                    outcomes[v, way] = o
                    bad = check(o, final)
                    spent, billed = o.result.total.cost_usd or 0.0, o.meter.total().usd
                    if abs(spent - billed) > 1e-9:
                        bad.append(f"TaskResult ${spent:.6f} but the fake billed ${billed:.6f}")
                    problems += [f"{v} {way}: {b}" for b in bad]
                    say(f"  {VENDORS[v]:<28} {way}: {o.result.status}, {len(o.calls)} calls, "
                        f"${spent:.4f} (the fake's bill ${billed:.4f}), {o.wall_s:.1f} s"
                        + ("" if not bad else "  NOT AS EXPECTED: " + "; ".join(bad)))
    finally:
        if server is not None:
            server.stop_blocking()
            server.cleanup()
    say(f"  ({len(outcomes)} task runs in {time.monotonic() - started:.0f} s)")
    if problems:
        say("\nPROBLEMS:\n" + "\n".join(problems))
    say(report(outcomes, vendors, a.calls))
    return not problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vendors", default=",".join(VENDORS), help="comma-separated vendors")
    p.add_argument("--calls", action="store_true", help="also print every call's bill")
    p.add_argument("--schema-last", action="store_true",
                   help="what-if: the fakes keep the output schema out of every cached prefix "
                   "(default: first, as OpenAI documents it)")
    p.add_argument("--out", help="also write everything printed to this file")
    p.add_argument("--nats", help="use this server instead of an embedded one")
    p.add_argument("--uvloop", action="store_true", help="uvloop instead of asyncio")
    p.add_argument("--timeout", type=float, default=120.0, help="give up on a task after, s")
    p.add_argument("--log-level", default="WARNING", help="swarmbus's log level (to stderr)")
    a = p.parse_args()
    vendors = a.vendors.split(",")
    for v in vendors:
        if v not in VENDORS:
            p.error(f"--vendors: unknown vendor {v!r}; use {', '.join(VENDORS)}")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, a.log_level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    os.environ[KEY_ENV] = "fake-key-for-the-loopback-billing-fakes"
    printed: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        printed.append(text)

    say(f"cost: {env_line(a.uvloop)}; builtin:code-review, one task (10 model calls over 4 "
        f"rounds) each way on each vendor. Billing fakes: input = {BYTES_PER_TOKEN} bytes of "
        "request text a token (output schema, system, messages; the schema "
        + ("last, outside every cached prefix: a what-if" if a.schema_last else "first")
        + f"), output = reply characters / {BYTES_PER_TOKEN}; cached input only for a prefix "
        f"an earlier request of the task sent: from {MIN_PREFIX['openai']:,} tokens in "
        f"128-token steps (OpenAI), from {MIN_PREFIX['google']:,} (Gemini 2.5 Pro, implicit), "
        f"from {MIN_PREFIX['anthropic']:,} and only at breakpoints, read where an earlier "
        "request wrote (Claude Sonnet 4.5)")
    ok = run(lambda: bench(a, vendors, say), use_uvloop=a.uvloop)
    if a.out:
        Path(a.out).write_text("\n".join(printed) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
