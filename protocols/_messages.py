"""The messages of the architect -> coder -> reviewer team, and the bus's own.

Work messages carry the whole ``WorkState`` (task, current design and code,
open findings, revision counts, spend so far), so agents keep no state
between messages and any replica on any machine can take the next step.

Models an LLM fills in (``Design``, ``Code``, ``Verdict``) use lists of
objects, never ``dict`` fields: Gemini rejects or empties those.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ._registry import Message, message_type

__all__ = [
    "AgentAnnouncement",
    "Code",
    "CodeSubmission",
    "Component",
    "DeadLetter",
    "Design",
    "DesignSpec",
    "Finding",
    "Limits",
    "Provenance",
    "RevisionRequest",
    "SourceFile",
    "TaskRequest",
    "TaskResult",
    "TaskStatus",
    "TestReport",
    "Usage",
    "Verdict",
    "WorkState",
]

TaskStatus = Literal[
    "approved", "rounds_exhausted", "budget_exceeded", "deadline_exceeded", "failed", "cancelled"
]
Severity = Literal["info", "minor", "major", "critical"]
Target = Literal["coder", "architect"]


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A time without a zone on the wire is UTC (naive and aware times do not compare)."""


class _Data(BaseModel):
    # JSON has no infinity or NaN: ours would go out as null and not decode again.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Usage(_Data):
    """Token usage and cost, summed over model calls.

    ``input_tokens`` includes cache reads (``cached_tokens``) and cache writes
    (``cache_write_tokens``); ``output_tokens`` includes ``reasoning_tokens``.
    ``cost_usd`` (USD) sums every priced call, estimated ones included; calls to
    unpriced models add nothing to it and are counted in ``unpriced_calls``, so a
    cost is never shown as known when it is not.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = Field(0.0, ge=0)
    calls: int = Field(0, description="Provider calls made (billed), whatever their outcome.")
    unpriced_calls: int = Field(0, description="Calls to models missing from the price table.")
    estimated_calls: int = Field(
        0, description="Calls whose reply carried no usage: tokens estimated from sizes."
    )
    cache_hits: int = Field(0, description="Answers served from the response cache (no call).")

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost_usd=min(self.cost_usd + other.cost_usd, sys.float_info.max),  # stays finite
            calls=self.calls + other.calls,
            unpriced_calls=self.unpriced_calls + other.unpriced_calls,
            estimated_calls=self.estimated_calls + other.estimated_calls,
            cache_hits=self.cache_hits + other.cache_hits,
        )


class Provenance(_Data):
    """Who produced an output: provider, model, tokens, cost (USD), latency (s), request hash.

    One provenance covers ``calls`` provider calls (a first attempt and its repair,
    say); a cache hit covers none (``from_cache``, cost 0.0, and ``original_usage``
    says what the call that filled the cache used and cost).
    """

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = Field(None, description="None when the model is unpriced.")
    latency_s: float = 0.0
    request_hash: str = ""
    calls: int = Field(1, ge=0, description="Provider calls this covers (0 for a cache hit).")
    estimated_calls: int = Field(
        0, ge=0, description="Of those, calls without usage figures (tokens estimated)."
    )
    from_cache: bool = False
    original_usage: Usage | None = Field(
        None, description="On a cache hit: what the call that filled the cache used and cost."
    )
    tried: list[str] = Field(default_factory=list, description="Models that failed before.")

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def estimated(self) -> bool:
        return self.estimated_calls > 0

    def usage(self) -> Usage:
        """What this output cost now (a cache hit: nothing, one hit)."""
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_tokens=self.cached_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
            cost_usd=self.cost_usd or 0.0,
            calls=self.calls,
            unpriced_calls=self.calls if self.cost_usd is None else 0,
            estimated_calls=self.estimated_calls,
            cache_hits=1 if self.from_cache else 0,
        )


class Limits(_Data):
    """Bounds that end a workflow cleanly (checked before every model call)."""

    max_code_revisions: int = Field(
        3, ge=0, description="Times the reviewer may send to the coder."
    )
    max_design_revisions: int = Field(
        2, ge=0, description="Times the reviewer may send to the architect."
    )
    budget_usd: float = Field(5.0, ge=0, description="Total spend across all roles.")
    timeout_s: float = Field(3600.0, gt=0, description="Deadline, relative to the first step.")
    deadline: UtcDatetime | None = Field(
        None, description="Absolute deadline (UTC if no zone); wins over timeout_s.")


@message_type("swarmbus.TaskRequest", topics=("task",))
class TaskRequest(Message):
    """Kick-off: only ``goal`` is required."""

    goal: str = Field(min_length=1, max_length=20_000)
    constraints: list[str] = Field(default_factory=list)
    language: str = "python"
    limits: Limits = Field(default_factory=Limits)


class Component(_Data):
    name: str
    responsibility: str


class Design(_Data):
    """The architect's output."""

    summary: str
    components: list[Component] = Field(default_factory=list)
    interfaces: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    acceptance_criteria: list[str] = Field(default_factory=list)


class SourceFile(_Data):
    path: str
    content: str


class Code(_Data):
    """The coder's output: source files and their tests."""

    files: list[SourceFile]
    notes: str = ""


class Finding(_Data):
    severity: Severity
    location: str = ""
    explanation: str
    target: Target = Field(description="Which role must act on it.")


class Verdict(_Data):
    """The reviewer's decision."""

    decision: Literal["approve", "revise_code", "revise_design"]
    summary: str
    findings: list[Finding] = Field(default_factory=list)


class TestReport(_Data):
    """What running the submitted tests in the sandbox showed."""

    __test__ = False  # not a pytest class

    passed: int = 0
    failed: int = 0
    errors: int = 0
    failed_tests: list[str] = Field(default_factory=list)
    exit_code: int | None = None
    timed_out: bool = False
    output: str = ""
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.failed == 0 and self.errors == 0 and not self.timed_out


class WorkState(_Data):
    """Everything the next agent needs; travels on every work message."""

    task: TaskRequest
    design: Design | None = None
    code: Code | None = None
    findings: list[Finding] = Field(default_factory=list, description="Open findings.")
    test_report: TestReport | None = None
    code_revisions: int = 0
    design_revisions: int = 0
    round: int = 0
    spend: dict[str, Usage] = Field(default_factory=dict, description="Usage per role so far.")
    deadline: UtcDatetime | None = None

    @property
    def total(self) -> Usage:
        total = Usage()
        for usage in self.spend.values():
            total = total + usage
        return total


@message_type("swarmbus.DesignSpec", topics=("design",))
class DesignSpec(Message):
    state: WorkState
    provenance: Provenance | None = None


@message_type("swarmbus.CodeSubmission", topics=("code",))
class CodeSubmission(Message):
    state: WorkState
    provenance: Provenance | None = None


@message_type("swarmbus.RevisionRequest", topics=("revise.code", "revise.design"))
class RevisionRequest(Message):
    """The reviewer sends work back: ``state.findings`` says what to fix."""

    state: WorkState
    verdict: Verdict
    provenance: Provenance | None = None


@message_type("swarmbus.TaskResult", topics=("result",))
class TaskResult(Message):
    """Final outcome. ``status`` is always present; on a limit, the best attempt and its
    open findings are included."""

    status: TaskStatus
    reason: str = ""
    design: Design | None = None
    code: Code | None = None
    findings: list[Finding] = Field(default_factory=list)
    test_report: TestReport | None = None
    rounds: int = 0
    code_revisions: int = 0
    design_revisions: int = 0
    spend: dict[str, Usage] = Field(default_factory=dict)
    total: Usage = Field(default_factory=Usage)


@message_type("swarmbus.DeadLetter", topics=("deadletter",))
class DeadLetter(Message):
    """A message no handler could take, with why."""

    subject: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = Field("", description="Original body (UTF-8, replaced errors), truncated.")
    body_size: int = 0
    body_truncated: bool = False
    error: str
    reason: Literal[
        "undecodable", "invalid", "unknown_type", "oversize", "rejected", "max_deliveries"
    ]
    agent: str = ""
    deliveries: int = 0
    stream_seq: int | None = None


@message_type("swarmbus.AgentAnnouncement")
class AgentAnnouncement(Message):
    """A live agent replica (refreshed while it runs; expires when it stops)."""

    agent: str
    instance: str
    topics: list[str]
    namespace: str
    model: str = ""
    version: str = ""
    host: str = ""
    pid: int = 0
    started_at: datetime
    concurrency: int = 0
    in_flight: int = 0
    handled: int = 0
    failed: int = 0
    dead_lettered: int = 0
