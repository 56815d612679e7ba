"""The code-served steps of a parallel build (``builtin:code-review-parallel``).

``Integrator`` serves two steps of one role:

- the *contract* step (output ``swarmbus.Contract``): before any coder starts, it
  checks the architect's ``ParallelDesign``: components that own disjoint files,
  dependencies on known components without a cycle, and, in the sandbox, an
  interface file that imports and defines every provided name with the signature
  the design gives it. A design of fewer than two components, or with a file owned
  twice, is built by a single coder; a broken contract goes back to the architect.
- the *integration* step (the join of the coders' fan-out, output ``swarmbus.Code``):
  it unites the components' disjoint file sets with the interface; a file a coder
  wrote outside its component's files is left out, with a finding for that coder.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from swarmbus.protocols import (
    Code,
    ComponentPlan,
    ConfigError,
    Contract,
    FanoutPlan,
    Finding,
    ParallelDesign,
    SourceFile,
    StepSpec,
    TestReport,
)

from ._call import StepCall
from ._step import StepAgent
from ._tools import TestRunner

__all__ = ["Integrator", "SandboxContract", "contract_findings", "contract_tests", "integrate"]

CONTRACT_TEST = "test_swarmbus_contract.py"


class SandboxContract:
    """``sandbox.contract``: the sandbox a contract step checks the interface in
    (``runner`` runs pytest files, as ``sandbox.pytest``'s does). The check itself is
    the ``Integrator``'s; the tool adds nothing before and corrects nothing after."""

    name = "sandbox.contract"

    def __init__(self, runner: TestRunner) -> None:
        self.runner = runner

    async def before(self, call: StepCall) -> None:
        return None

    def after(self, call: StepCall, output: BaseModel) -> BaseModel:
        return output


class Integrator(StepAgent):
    """Serves a parallel build's contract check and its integration (see the module).
    The contract's test runs in the sandbox of the step's ``sandbox.contract`` tool."""

    async def perform(self, call: StepCall) -> BaseModel:
        design = next((v for v in call.inputs.values() if isinstance(v, ParallelDesign)), None)
        if design is None:
            raise TypeError(f"step {call.step.id!r}: the integrator needs a "
                            "swarmbus.ParallelDesign input")
        if issubclass(call.output_type, Contract):
            return await self._contract(call, design)
        if issubclass(call.output_type, Code):
            name, parts = next(((k, v) for k, v in call.inputs.items()
                                if not isinstance(v, ParallelDesign)), ("", None))
            code, findings = integrate(design, parts,
                                       call.workflow.producer(name) if name else None)
            call.state.findings = [*call.state.findings, *findings]
            return code
        raise TypeError(f"step {call.step.id!r}: the integrator produces a swarmbus.Contract "
                        f"or swarmbus.Code, not {call.output_type.__name__}")

    async def _contract(self, call: StepCall, design: ParallelDesign) -> Contract:
        architect = call.producer_role(next(k for k, v in call.inputs.items()
                                            if isinstance(v, ParallelDesign)))
        decision, findings = contract_findings(design, architect)
        if decision == "parallel":
            tool = self.tools.get("sandbox.contract")
            runner = tool.runner if isinstance(tool, SandboxContract) else None
            if runner is None or "sandbox.contract" not in call.step.tool_names:
                raise ConfigError(f"step {call.step.id!r}: the contract check runs in the "
                                  "sandbox: give the step `tools: [sandbox.contract]`")
            report = await _run_contract(runner, design)
            findings = _report_findings(report, design, architect)
            if findings:
                decision = "revise_design"
        kept = [f for f in call.state.findings if decision != "revise_design"]
        summary = {"parallel": f"{len(design.components)} components build in parallel",
                   "single": "one coder builds it", "revise_design": "the contract fails"}
        return Contract(decision=decision, summary=summary[decision],
                        findings=[*kept, *findings])


def contract_findings(design: ParallelDesign, architect: str,
                      ) -> tuple[str, list[Finding]]:
    """What a design's shape decides before the sandbox: ``single`` (fewer than two
    components, or a file owned by two), ``revise_design`` (a dependency on no
    component, a cycle, a provided name missing from the interface), or
    ``parallel``; with the findings for the architect."""
    comps = design.components
    if len(comps) < 2:
        return "single", []
    owner: dict[str, str] = {}
    twice: list[str] = []
    for c in comps:
        for path in c.files:
            if path in owner and owner[path] != c.name:
                twice.append(f"{path} ({owner[path]} and {c.name})")
            owner.setdefault(path, c.name)
    if twice:
        return "single", [Finding(severity="info", location="components", target=architect,
                                  explanation="files owned by two components, so one coder "
                                  f"builds it: {', '.join(twice)}")]
    _, problems = FanoutPlan.of([c.model_dump() for c in comps])
    out = [Finding(severity="major", location="components.depends_on", target=architect,
                   explanation=p) for p in problems]
    for c in comps:
        if design.interface.path in c.files:
            out.append(Finding(severity="major", location=f"components[{c.name}].files",
                               target=architect, explanation=f"{design.interface.path} is the "
                               "interface: the design writes it, no component owns it"))
    return ("revise_design" if out else "parallel"), out


def _declared(entry: str) -> tuple[str, str]:
    """``"def parse(text: str) -> int"`` -> ``("parse", "(text: str) -> int")``."""
    text = entry.strip().removeprefix("async ").removeprefix("def ").removeprefix("class ")
    name, paren, rest = text.partition("(")
    return name.strip().rstrip(":"), (paren + rest).strip().rstrip(":").strip()


def contract_tests(design: ParallelDesign) -> SourceFile:
    """A pytest file checking the interface: it imports, and each provided name exists
    with its declared signature (compared as ``inspect.signature`` writes it, spaces
    ignored); test ids are ``<component>:<name>``."""
    module = design.interface.path.removesuffix(".py").replace("/", ".")
    cases = [(c.name, *_declared(p)) for c in design.components for p in c.provides]
    body = f'''"""The parallel design's contract, checked before any coder starts."""
import importlib
import inspect
import json

import pytest

CASES = json.loads({json.dumps(json.dumps(cases))})


def _norm(text):
    return "".join(text.split()).replace("'", '"')


def test_the_interface_imports():
    importlib.import_module({module!r})


@pytest.mark.parametrize("component,name,signature", CASES,
                         ids=[f"{{c}}:{{n}}" for c, n, _ in CASES])
def test_provided(component, name, signature):
    interface = importlib.import_module({module!r})
    assert hasattr(interface, name), (
        f"CONTRACT {{component}}: {{name}} is not defined in the interface")
    if signature:
        got = name + str(inspect.signature(getattr(interface, name)))
        assert _norm(got) == _norm(name + signature), (
            f"CONTRACT {{component}}: the interface has {{got}}, the design says "
            f"{{name}}{{signature}}")
'''
    return SourceFile(path=CONTRACT_TEST, content=body)


async def _run_contract(runner: TestRunner, design: ParallelDesign) -> TestReport:
    return await runner([design.interface, contract_tests(design)])


def _report_findings(report: TestReport, design: ParallelDesign, architect: str,
                     ) -> list[Finding]:
    if report.exit_code == 0 and report.failed == 0 and report.errors == 0:
        return []
    lines = [line.split("CONTRACT ", 1)[1].strip() for line in report.output.splitlines()
             if "CONTRACT " in line and "f\"CONTRACT" not in line and "assert" not in line]
    details = list(dict.fromkeys(lines))[:10]
    if not details:
        tail = report.output.strip().splitlines()[-15:]
        details = [f"the interface {design.interface.path} does not import or the check "
                   "failed: " + " | ".join(tail)]
    return [Finding(severity="critical", location=design.interface.path, target=architect,
                    explanation=d) for d in details]


def integrate(design: ParallelDesign, parts: Any, fanout: StepSpec | None,
              ) -> tuple[Code, list[Finding]]:
    """The components' files united with the interface. A file outside its component's
    ``files`` is left out (another component's, or no one's), with a finding addressed
    to the fan-out's step and item (``build[parser]``)."""
    owners: dict[str, ComponentPlan] = {c.name: c for c in design.components}
    files: dict[str, SourceFile] = {design.interface.path: design.interface}
    notes: list[str] = []
    findings: list[Finding] = []
    where = fanout.id if fanout is not None else "build"
    role = fanout.role if fanout is not None else "coder"
    for r in getattr(parts, "items", []):
        if not r.ok or not isinstance(r.value, Code):
            continue
        comp = owners.get(r.key)
        allowed = set(comp.files) if comp is not None else set()
        for f in r.value.files:
            if f.path in allowed:
                files[f.path] = f
                continue
            owner = next((c.name for c in design.components if f.path in c.files), None)
            whose = f"component {owner}'s" if owner else "no component's"
            findings.append(Finding(
                severity="major", location=f"{where}[{r.key}]: {f.path}", target=role,
                explanation=f"component {r.key} wrote {f.path}, which is {whose} file (its "
                f"own: {', '.join(sorted(allowed)) or 'none'}); it was left out"))
        if r.value.notes:
            notes.append(f"{r.key}: {r.value.notes}")
    return Code(files=list(files.values()), notes="\n".join(notes)), findings
