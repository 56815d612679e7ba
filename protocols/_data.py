"""The data types a workflow's steps produce and consume (artifacts), and findings.

Types an LLM fills in use lists of objects, never ``dict`` fields: Gemini
rejects or empties those in output schemas. Each is registered with
``@data_type`` so a workflow file can name it (``swarmbus.Design``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ._registry import data_type
from ._usage import _Data

__all__ = [
    "Code",
    "Component",
    "ComponentPlan",
    "Contract",
    "Design",
    "Finding",
    "ParallelDesign",
    "Review",
    "SourceFile",
    "TestReport",
    "Text",
    "Verdict",
]

Severity = Literal["info", "minor", "major", "critical"]


@data_type("swarmbus.Text")
class Text(_Data):
    """Free text: the output of a step that needs no structure."""

    text: str


class Component(_Data):
    name: str
    responsibility: str


@data_type("swarmbus.Design")
class Design(_Data):
    """A design: what to build, its parts, their interfaces, files, acceptance criteria."""

    summary: str
    components: list[Component] = Field(default_factory=list)
    interfaces: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    acceptance_criteria: list[str] = Field(default_factory=list)


class SourceFile(_Data):
    path: str
    content: str


@data_type("swarmbus.Code")
class Code(_Data):
    """Source files and their tests."""

    files: list[SourceFile]
    notes: str = ""


class Finding(_Data):
    """One problem a review found, and who must act on it."""

    severity: Severity
    location: str = ""
    explanation: str
    target: str = Field(description="The role (or step id) that must act on it.")


class ComponentPlan(_Data):
    """One component of a parallel build: the files it owns (its tests included), the
    names it provides (as the interface declares them: ``parse(text: str) -> int``),
    and the components it builds on (by name)."""

    name: str
    responsibility: str
    files: list[str] = Field(description="The files it writes, tests included; no other "
                             "component writes them.")
    provides: list[str] = Field(default_factory=list, description="Signatures it implements, "
                                "as in the interface file: `parse(text: str) -> int`.")
    depends_on: list[str] = Field(default_factory=list, description="Components it uses.")


@data_type("swarmbus.ParallelDesign")
class ParallelDesign(_Data):
    """A design for coders working at once: one ``interface`` file of signatures only,
    and components that own disjoint files and depend on each other without cycles."""

    summary: str
    interface: SourceFile = Field(description="Signatures (stubs) of every provided name.")
    components: list[ComponentPlan] = Field(default_factory=list)
    acceptance_criteria: list[str] = Field(default_factory=list)


@data_type("swarmbus.Contract")
class Contract(_Data):
    """A parallel design's check: build it in ``parallel``, with a ``single`` coder
    (fewer than two components, or files owned twice), or ``revise_design``."""

    decision: Literal["parallel", "single", "revise_design"]
    summary: str = ""
    findings: list[Finding] = Field(default_factory=list)


@data_type("swarmbus.Verdict")
class Verdict(_Data):
    """A review's decision; a workflow routes on ``decision``."""

    decision: Literal["approve", "revise_code", "revise_design"]
    summary: str
    findings: list[Finding] = Field(default_factory=list)


@data_type("swarmbus.Review")
class Review(_Data):
    """A review of any work (a document, a plan, code): ``approve`` it, or send it back
    to be revised, with findings addressed to whoever must act."""

    decision: Literal["approve", "revise"]
    summary: str
    findings: list[Finding] = Field(default_factory=list)


@data_type("swarmbus.TestReport")
class TestReport(_Data):
    """What running tests in the sandbox showed.

    ``passed``, ``failed``, ``errors``, ``failed_tests`` and ``output`` come from the
    process that ran the submitted code when ``self_reported`` is true: a hostile
    submission can forge them. ``timed_out``, ``limits_hit`` and a negative
    ``exit_code`` (killed by that signal) are observed from outside the sandbox.
    ``kind="acceptance"`` is a run of hidden tests; it counts only with
    ``token_verified`` (the run's random token came back after the checks).
    """

    __test__ = False  # not a pytest class

    passed: int = 0
    failed: int = 0
    errors: int = 0
    failed_tests: list[str] = Field(default_factory=list)
    exit_code: int | None = None
    timed_out: bool = False
    output: str = ""
    truncated: bool = False
    kind: Literal["submitted", "acceptance"] = "submitted"
    isolation: str = Field("", description="How the run was isolated, in one line.")
    self_reported: bool = Field(
        True, description="The counts come from the submission's own process (forgeable)."
    )
    token_verified: bool = Field(
        False, description="Acceptance: the per-run token came back after every check."
    )
    limits_hit: list[str] = Field(
        default_factory=list, description="Enforced from outside: timeout, cpu, memory, processes."
    )

    @property
    def ok(self) -> bool:
        """Tests ran, at least one passed, none failed or errored, exit code 0, no
        timeout; for an acceptance run also the token."""
        return (
            self.exit_code == 0
            and self.passed > 0
            and self.failed == 0
            and self.errors == 0
            and not self.timed_out
            and (self.kind != "acceptance" or self.token_verified)
        )
