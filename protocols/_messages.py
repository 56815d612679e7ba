"""The messages on the bus: the kick-off, work for a step, the result, dead letters,
live agents.

Work messages carry the whole ``WorkState`` (the task, the artifacts so far, open
findings, edge counts, spend, the deadline), so agents keep no state between
messages and any replica on any machine can take the next step.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, Field, JsonValue

from ._data import Code, Design, Finding, SourceFile, TestReport
from ._fanout import WorkItem
from ._registry import Message, message_type
from ._topics import CANCEL, DEADLINE, DEADLINE_TIMER, RESUME
from ._usage import Provenance, RouteDecision, Usage, UtcDatetime, _Data

__all__ = [
    "DEFAULT_BUDGET_USD",
    "DEFAULT_TIMEOUT_S",
    "AgentAnnouncement",
    "ArtifactRef",
    "Cancel",
    "DeadLetter",
    "DeadLetterReason",
    "Deadline",
    "Limits",
    "Resume",
    "TaskRequest",
    "TaskResult",
    "TaskStatus",
    "Work",
    "WorkState",
]

TaskStatus = Literal[
    "approved", "rounds_exhausted", "budget_exceeded", "deadline_exceeded", "failed", "cancelled"
]

_T = TypeVar("_T", bound=BaseModel)

DEFAULT_BUDGET_USD = 5.0
DEFAULT_TIMEOUT_S = 3600.0


class Limits(_Data):
    """Bounds that end a workflow cleanly.

    Unset fields take the workflow's ``limits``, then the defaults ($5, one hour).
    The budget is checked before every model call (a call whose worst case cannot
    fit is not made, or is made with fewer output tokens), the deadline bounds the
    whole run (a call in flight is cut at it), and the caps are checked whenever a
    route is taken:

    - ``caps``: route name -> times routes of that name may be taken, counted across
      every step that has one (``{"revise_code": 5}``); it replaces those routes' own
      ``max``.
    - ``send_backs``: role -> times work may be sent back to that role (a route to a
      step at or before the step that sends it), counted across every step that
      sends; it replaces those routes' own ``max``. ``max_code_revisions`` and
      ``max_design_revisions`` are the built-in team's names for
      ``send_backs["coder"]`` and ``send_backs["architect"]``.
    """

    budget_usd: float | None = Field(None, ge=0, description="Total USD across all steps.")
    timeout_s: float | None = Field(None, gt=0, description="Seconds from submission.")
    deadline: UtcDatetime | None = Field(
        None, description="Absolute deadline (UTC if no zone); wins over timeout_s.")
    caps: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Route name -> times routes of that name may be taken, across steps.")
    send_backs: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Role -> times work may be sent back to it, from any step.")
    max_code_revisions: int | None = Field(
        None, ge=0, description="send_backs['coder']: times work may go back to the coder.")
    max_design_revisions: int | None = Field(
        None, ge=0,
        description="send_backs['architect']: times work may go back to the architect.")

    def route_caps(self) -> dict[str, int]:
        """Cap overrides by route name."""
        return dict(self.caps)

    def send_back_caps(self) -> dict[str, int]:
        """Send-back caps by role (the built-in team's names included)."""
        caps = dict(self.send_backs)
        if self.max_code_revisions is not None:
            caps["coder"] = self.max_code_revisions
        if self.max_design_revisions is not None:
            caps["architect"] = self.max_design_revisions
        return caps

    def deadline_from(self, submitted: datetime, default_timeout_s: float | None) -> datetime:
        """The run's deadline: ``deadline``, else ``submitted`` plus ``timeout_s`` (else
        ``default_timeout_s``, else ``DEFAULT_TIMEOUT_S``); a timeout beyond the calendar
        gives the latest representable time."""
        if self.deadline is not None:
            return self.deadline
        timeout = self.timeout_s or default_timeout_s or DEFAULT_TIMEOUT_S
        try:
            return submitted + timedelta(seconds=timeout)
        except OverflowError:
            return datetime.max.replace(tzinfo=UTC)


@message_type("swarmbus.TaskRequest", topics=("task",))
class TaskRequest(Message):
    """Kick-off: only ``goal`` is required.

    ``acceptance_tests`` are hidden: no model sees them; the sandbox runs them
    apart from the submission's own tests and the result reports them apart.
    """

    goal: str = Field(min_length=1, max_length=20_000)
    constraints: list[str] = Field(default_factory=list)
    language: str | None = Field(
        None, description="The language to work in, when the workflow leaves it open "
        "(shown to every step; none: the workflow's prompts say).")
    inputs: dict[str, str] = Field(
        default_factory=dict, description="Named inputs a workflow declares beyond the goal.")
    workflow: str | None = Field(
        None, description="Workflow name or hash; default: the namespace's default workflow.")
    limits: Limits = Field(default_factory=Limits)
    submitted_at: UtcDatetime | None = Field(
        None, description="When it was submitted; absent: the stream's time of the message.")
    acceptance_tests: list[SourceFile] = Field(
        default_factory=list, description="Hidden tests: never shown to any model.")


class ArtifactRef(_Data):
    """An artifact kept in the namespace's object store instead of in the message.

    In ``WorkState.artifacts`` it appears as ``{"swarmbus_ref": {...}}``: a peer that
    finds one reads the object ``key`` (its SHA-256) from bucket
    ``swarm_<namespace>_<bucket>``; its bytes are the artifact's JSON.
    """

    bucket: str
    key: str
    size: int = Field(ge=0, description="Bytes.")
    media_type: str = "application/json"

    def as_value(self) -> dict[str, JsonValue]:
        return {"swarmbus_ref": self.model_dump(mode="json")}

    @classmethod
    def of(cls, value: JsonValue) -> ArtifactRef | None:
        """The reference ``value`` holds, or None when it is an artifact itself."""
        if isinstance(value, dict) and set(value) == {"swarmbus_ref"}:
            inner = value["swarmbus_ref"]
            if isinstance(inner, dict):
                return cls.model_validate(inner)
        return None


class WorkState(_Data):
    """Everything the next step needs; travels on every work message."""

    task: TaskRequest
    workflow: str = Field("", description="Hash of the compiled workflow this run follows.")
    artifacts: dict[str, JsonValue] = Field(
        default_factory=dict, description="Artifact name -> value (or an object-store reference).")
    findings: list[Finding] = Field(default_factory=list, description="Open findings.")
    diffs: dict[str, str] = Field(
        default_factory=dict, description="Artifact name -> its last revision, as a unified "
        "diff against the version before (code artifacts).")
    test_report: TestReport | None = None
    acceptance: TestReport | None = Field(None, description="The hidden acceptance tests' run.")
    edges: dict[str, int] = Field(
        default_factory=dict, description="'<step>.<route>' -> times taken.")
    round: int = 1
    steps: int = Field(0, description="Steps run so far.")
    spend: dict[str, Usage] = Field(default_factory=dict, description="Usage per role so far.")
    choices: dict[str, RouteDecision] = Field(
        default_factory=dict, description="Step id -> the model its router chose: kept for "
        "the run's later rounds of the step (a switch would lose the provider's cache).")
    budget_usd: float = Field(DEFAULT_BUDGET_USD, ge=0)
    deadline: UtcDatetime | None = None
    caps: dict[str, int] = Field(
        default_factory=dict, description="Cap overrides by route name (Limits.caps).")
    send_back_caps: dict[str, int] = Field(
        default_factory=dict, description="Send-back caps by role (Limits.send_back_caps).")
    send_backs: dict[str, int] = Field(
        default_factory=dict, description="Role -> times work was sent back to it.")
    resumed_after: int = Field(
        0, ge=0, description="The stream sequence of the result this run resumed from "
        "(0: never resumed); the run's next result must come after it.")

    @property
    def total(self) -> Usage:
        """What every role spent so far, summed."""
        return Usage.sum(self.spend.values())

    def artifact(self, name: str, type_: type[_T]) -> _T | None:
        """The artifact ``name`` validated as ``type_``, or None when absent."""
        value = self.artifacts.get(name)
        return None if value is None else type_.model_validate(value)

    @property
    def design(self) -> Design | None:
        """The ``design`` artifact (the built-in team's name), if any."""
        return self.artifact("design", Design)

    @property
    def code(self) -> Code | None:
        """The ``code`` artifact (the built-in team's name), if any."""
        return self.artifact("code", Code)


@message_type("swarmbus.Work", topics=("step.>",))
class Work(Message):
    """Work for the step its topic names (``step.<id>``)."""

    state: WorkState
    source: str = Field("", description="The step that produced it ('' for the task).")
    output: str = Field("", description="The artifact that step produced.")
    edge: str = Field("", description="The route taken, '<step>.<route>', if any.")
    provenance: Provenance | None = Field(None, description="The producing step's model.")
    usage: Usage | None = Field(None, description="What the producing step spent.")
    item: WorkItem | None = Field(
        None, description="The item of a fan-out this work runs (a for_each step's).")


@message_type("swarmbus.TaskResult", topics=("result",))
class TaskResult(Message):
    """Final outcome. ``status`` is always present; on a limit, the best attempt and its
    open findings are included."""

    status: TaskStatus
    reason: str = ""
    workflow: str = Field("", description="Hash of the workflow that ran (Swarm-Workflow).")
    artifacts: dict[str, JsonValue] = Field(default_factory=dict)
    design: Design | None = None
    code: Code | None = None
    findings: list[Finding] = Field(default_factory=list)
    test_report: TestReport | None = None
    acceptance: TestReport | None = None
    rounds: int = 0
    steps: int = 0
    routes: dict[str, int] = Field(default_factory=dict, description="Route name -> times.")
    send_backs: dict[str, int] = Field(
        default_factory=dict, description="Role -> times work was sent back to it.")
    code_revisions: int = Field(0, description="send_backs['coder'] (the built-in team's name).")
    design_revisions: int = Field(0, description="send_backs['architect'].")
    spend: dict[str, Usage] = Field(default_factory=dict)
    total: Usage = Field(default_factory=Usage)
    step: str = Field("", description="The step that ended the workflow ('' if none ran).")
    provenance: Provenance | None = Field(None, description="That step's model.")
    usage: Usage | None = Field(None, description="What that step spent (in total already).")
    retryable: bool = Field(
        False, description="Ended by a cause another attempt may not meet (a provider "
        "outage past the deadline, a step that failed on every delivery): `swarmbus retry` "
        "resumes it from its last completed step.")


@message_type("swarmbus.Deadline", topics=(DEADLINE, DEADLINE_TIMER))
class Deadline(Message):
    """The run's deadline timer. Published on ``timer.deadline`` with the header
    ``Nats-Schedule: @at <at>`` (nats-server 2.12+ holds it), the server publishes it
    on ``deadline`` at ``at``; the supervisor then ends the run if nothing has."""

    at: UtcDatetime


@message_type("swarmbus.Cancel", topics=(CANCEL,))
class Cancel(Message):
    """A request to cancel the run: the supervisor sets its cancel flag (agents in the
    middle of a call abort it) and ends the run if no agent does."""

    reason: str = ""


@message_type("swarmbus.Resume", topics=(RESUME,))
class Resume(Message):
    """A run that ended resumes: its result at stream sequence ``after`` is superseded,
    and step ``step`` runs again on the work it had (the spend so far kept), until
    ``deadline``."""

    after: int = Field(ge=1, description="Stream sequence of the superseded result.")
    step: str
    deadline: UtcDatetime | None = None
    reason: str = ""


DeadLetterReason = Literal[
    "undecodable", "invalid", "unknown_type", "oversize", "rejected", "max_deliveries",
    "id_taken",
]


@message_type("swarmbus.DeadLetter", topics=("deadletter",))
class DeadLetter(Message):
    """A message no handler could take, with why."""

    subject: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = Field("", description="Original body (UTF-8, replaced errors), truncated.")
    body_size: int = 0
    body_truncated: bool = False
    error: str
    reason: DeadLetterReason
    agent: str = ""
    deliveries: int = 0
    stream_seq: int | None = None


@message_type("swarmbus.AgentAnnouncement")
class AgentAnnouncement(Message):
    """A live agent replica (refreshed while it runs; expires when it stops)."""

    agent: str
    instance: str
    topics: list[str]
    consumer: str = Field("", description="The durable consumer it pulls from ('' : agent).")
    workflow: str = Field("", description="The workflow whose steps it serves ('' : none).")
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
    settings: dict[str, JsonValue] = Field(
        default_factory=dict, description="Effective consumer settings (ack wait, deliveries).")
    stalled: str = Field(
        "", description="Why it holds its outputs and pulls no work ('storage full'); "
        "empty while it works.")
