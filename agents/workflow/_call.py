"""``StepCall``: one run of one step, as ``StepAgent.perform`` gets it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import BaseModel, ValidationError

from swarmbus.bus import metric_scope
from swarmbus.protocols import (
    Code,
    CodeEdits,
    CompiledWorkflow,
    ConfigError,
    EditsNotApplied,
    Provenance,
    RouteDecision,
    StepSpec,
    Usage,
    WorkItem,
    WorkState,
    apply_edits,
    edits_type,
)

from .._agent import Context
from .._run import current_run
from ..models import (
    ChatMessage,
    LimitReached,
    Model,
    ModelError,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    OutputTruncatedError,
    OutputValidationError,
    ProviderAuthError,
    ProviderError,
    RoutedModel,
    answering,
    current_ledger,
    merge_provenance,
)
from ._prompt import render_system, work_parts
from ._reuse import steady_inputs
from ._spans import chat_span, record_response

if TYPE_CHECKING:
    from ._routing import Routes

__all__ = ["EDITS_ANSWER", "FIRST_ANSWER", "WHOLE_AGAIN", "WHOLE_ANSWER", "StepCall", "permanent",
           "repair_text"]


def permanent(e: BaseException) -> bool:
    """Whether a second attempt cannot fix ``e``: the error says so (``permanent``), or it
    is a config mistake, an authentication failure, or not a provider's failure."""
    flag = getattr(e, "permanent", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(e, ConfigError | ProviderAuthError) or not isinstance(e, ProviderError)


def _retry_delay(attempt: int) -> float:
    return float(min(2 ** (attempt - 1), 60))


@dataclass
class StepCall:
    """One run of one step: what ``StepAgent.perform`` gets.

    ``inputs`` are the step's input artifacts, validated into their types;
    ``previous`` is this step's own output from an earlier round (None the
    first time); ``state`` is the work so far (tools add facts to it);
    ``artifacts`` every artifact as its templates see it (references to the
    object store read). ``ask()`` renders the prompts and asks ``model`` for an
    ``output_type``, retrying transient provider failures (after the provider's
    ``Retry-After``, else ``retry_delay(attempt)`` seconds) while the run's
    deadline allows.
    """

    workflow: CompiledWorkflow
    step: StepSpec
    state: WorkState
    inputs: dict[str, BaseModel]
    previous: BaseModel | None
    output_type: type[BaseModel]
    model: Model | None
    settings: ModelSettings
    ctx: Context[Any]
    provenance: Provenance | None = None
    artifacts: Mapping[str, Any] | None = None
    retry_delay: Callable[[int], float] = field(default=_retry_delay)
    item: WorkItem | None = None
    """The item of a fan-out this call runs (a ``for_each`` step's), else None."""
    revise: Literal["edits", "whole"] = "edits"
    """How the step revises its own code when the workflow does not say (its role's)."""
    routes: Routes | None = None
    """Where a routed step's decision is made (None: a routed model answers with its
    always-best candidate)."""
    decision: RouteDecision | None = None
    """A routed step's: the candidate that answers it in this run, and why."""

    def producer_role(self, artifact: str) -> str:
        """The role of the step that produces ``artifact`` ('' if none); for a join's
        output, the role of the fan-out it joins (whose items wrote the work)."""
        producer = self.workflow.producer(artifact)
        if producer is not None and producer.join is not None:  # a join unites the items'
            producer = self.workflow.steps.get(producer.join, producer)  # work: theirs
        return producer.role if producer is not None else ""

    @property
    def edits(self) -> bool:
        """Whether the step answers with edits (``edits_type`` of its output type): its
        output is code and its ``revise`` (else its role's) is not ``whole``. Its first
        round gives every file in the same form (``files``), so every round of the step
        asks for one type: the requests share their prefix, which providers cache."""
        return ((self.step.revise or self.revise) == "edits"
                and issubclass(self.output_type, Code))

    def cache_key(self) -> str:
        """The key that keeps this step's requests of this run together in the provider's
        prompt cache (OpenAI's ``prompt_cache_key``): a hash of the run, the step and the
        item, so that nothing of the run reaches the provider."""
        raw = "\0".join((self.ctx.workflow_id, self.step.id, self.item.key if self.item else ""))
        return "swarmbus-" + hashlib.sha256(raw.encode()).hexdigest()[:32]

    def request(self, output_type: type[BaseModel] | None = None, *,
                answer: str = "") -> ModelRequest[BaseModel]:
        """The model request for this step: the system prompt, the work so far (in
        sections, what later rounds send again first, with cache breakpoints), the
        type (``output_type``, default the step's) and ``answer``: how to answer, last."""
        show_report = any(isinstance(v, Code) for v in self.inputs.values()) or (
            isinstance(self.previous, Code) or issubclass(self.output_type, Code))
        parts = work_parts(self.step, self.state, self.inputs, self.previous,
                           show_report=show_report, all_findings=bool(self.step.routes),
                           artifacts=self.artifacts, item=self.item, answer=answer,
                           steady=steady_inputs(self.workflow, self.step))
        return ModelRequest(
            system=render_system(self.step, self.state, artifacts=self.artifacts,
                                 item=self.item),
            messages=(ChatMessage.of("user", parts),),
            output_type=output_type or self.output_type,
            settings=self.settings,
            cache_key=self.cache_key(),
            cache_system=True,
        )

    async def ask(self) -> BaseModel:
        """Ask the step's model; sets ``provenance``.

        A transient failure (rate limit, 5xx, timeout, connection) is tried again
        after the provider's ``Retry-After`` (else ``retry_delay``) for as long as the
        run's deadline allows; a cancel or the deadline cuts the wait. A step that
        revises its own code (``edits``) is asked for ``CodeEdits`` and gets its
        code with them applied (see ``ask_edits``). Raises ``ModelError`` for a permanent
        failure, ``LimitReached`` when the deadline comes first (``deadline_exceeded``)
        or the budget cut the answer short (``budget_exceeded``).
        """
        if self.model is None:
            raise ConfigError(
                f"no model for step {self.step.id!r} (role {self.step.role!r}): give "
                f"`roles.{self.step.role}.model` in swarm.yaml or `model:` in the workflow")
        if isinstance(self.model, RoutedModel) and self.routes is not None:
            self.decision = await self.routes.decide(self, self.model)
        if self.edits:
            output = await self.ask_edits()
        else:
            revising = issubclass(self.output_type, Code) and isinstance(self.previous, Code)
            response = await self.complete(self.request(answer=WHOLE_AGAIN if revising else ""))
            self.provenance, output = response.provenance, response.output
        if self.decision is not None and self.provenance is not None:
            self.provenance = self.provenance.model_copy(update={"route": self.decision})
        return output

    async def ask_edits(self) -> BaseModel:
        """The step's code revised by the model's edits (``edits_type`` of its output
        type), applied to its previous code. Edits that do not apply get one repair (the
        model is told which, why, and shown those files as they are now); if that fails
        too, or the model cannot answer in the edits' form at all in a later round, it is
        asked for every file whole. Every call is paid and counted."""
        kind = edits_type(self.output_type)
        first = not isinstance(self.previous, Code)
        request = self.request(kind, answer=FIRST_ANSWER if first else EDITS_ANSWER)
        spent: list[Provenance] = []
        code = self.previous if isinstance(self.previous, Code) else Code(files=[])
        try:
            for attempt in (1, 2):
                response = await self.complete(request)
                spent.append(response.provenance)
                change = _as(kind, response.output)
                try:
                    return self._revised(self._typed(apply_edits(code, change), change), spent)
                except ValidationError as e:  # a first round missing a field of the type
                    raise OutputValidationError(
                        f"{response.provenance.name}: the files do not make a "
                        f"{self.output_type.__name__}: {e}", model=response.provenance.name,
                        usage=Usage()) from None
                except EditsNotApplied as e:
                    self.ctx.log.warning("edits did not apply", step=self.step.id,
                                         attempt=attempt,
                                         failures=[str(f)[:200] for f in e.failures])
                    code = e.code
                    request = replace(request, messages=(
                        *request.messages,
                        ChatMessage(role="assistant", content=change.model_dump_json()),
                        ChatMessage(role="user", content=repair_text(e))))
        except OutputValidationError as e:
            if first:  # no form is simpler than whole files: the model's answer is invalid
                raise
            spent.append(_paid(e, self.model))
            self.ctx.log.warning("no valid edits", step=self.step.id, error=str(e)[:300])
        whole = await self.complete(self.request(answer=WHOLE_ANSWER))
        spent.append(whole.provenance)
        return self._revised(whole.output, spent)

    def _typed(self, code: Code, change: CodeEdits) -> Code:
        """``code`` as the step's output type (a first round's, built on empty code, with
        the fields ``change`` gives). Raises ``ValidationError`` for one it lacks."""
        if isinstance(code, self.output_type):
            return code
        given = {k: v for k in type(change).model_fields if k not in CodeEdits.model_fields
                 and (v := getattr(change, k)) is not None}
        typed = self.output_type.model_validate({**code.model_dump(), **given})
        assert isinstance(typed, Code)  # the step's output type is code (``edits``)
        return typed

    def _revised(self, output: BaseModel, spent: list[Provenance]) -> BaseModel:
        last = spent[-1]
        self.provenance = last if len(spent) == 1 else merge_provenance(
            spent, provider=last.provider, model=last.model,
            latency_s=sum(p.latency_s or 0.0 for p in spent), request_hash=last.request_hash)
        return output

    async def complete(self, request: ModelRequest[BaseModel]) -> ModelResponse[BaseModel]:
        """``request`` answered by the step's model, transient failures retried (see
        ``ask``); a model that does not book its own calls has its answer booked."""
        assert self.model is not None
        run = current_run()
        attempt = 0
        while True:
            ledger = current_ledger()
            booked = len(ledger.records) if ledger is not None else 0
            try:
                with answering(self.decision.model) if self.decision else nullcontext(), \
                        metric_scope(step=self.step.id), \
                        chat_span(self.model.name, request) as span:
                    response = await self.model.complete(request)
                    record_response(span, response, self.step.id)
            except OutputTruncatedError as e:
                if e.budget_tokens is not None:
                    raise LimitReached("budget_exceeded", str(e)) from None
                raise
            except ModelError as e:
                if permanent(e) or run is None:
                    raise
                attempt += 1
                # The provider's Retry-After when it gave one, else our doubling delay.
                asked = getattr(e, "retry_after_s", None)
                delay = float(asked) if asked else self.retry_delay(attempt)
                run.last_error = f"{self.model.name}: {str(e)[:300]}"
                left = run.time_left_s()
                if left is not None and delay >= left:
                    raise LimitReached(
                        "deadline_exceeded",
                        f"the deadline passes before {self.model.name} can be tried again "
                        f"(in {delay:.1f} s; {max(left, 0):.1f} s left); last error: {e}",
                    ) from None
                self.ctx.log.warning("model failed, retrying", step=self.step.id,
                                     model=self.model.name, error=str(e)[:500],
                                     attempt=attempt, delay_s=round(delay, 3))
                await anyio.sleep(delay)
                continue
            break
        if ledger is not None and len(ledger.records) == booked:
            # A model that does not book its calls itself (a user's own Model): book the
            # answer, so nothing it reports is left out of the spend.
            with metric_scope(step=self.step.id):
                await ledger.book(response.provenance)
        return response


EDITS_ANSWER = (
    "Answer with what changes, not every file: `edits` replace text in a file (`search`: "
    "whole lines copied exactly from the file as shown above, indentation included, enough "
    "of them to occur only once; `replace`: the lines that take their place, empty to "
    "remove them); `files`: new files, or a file rewritten entirely, whole; `delete`: paths "
    "to remove; `rename`: a file's new path (edits then use it). Files you do not name "
    "stay as they are.")
FIRST_ANSWER = ("There is no code yet: give every file whole in `files` (path and full "
                "content, tests included); leave `edits`, `delete` and `rename` empty.")
WHOLE_AGAIN = ("Answer with every file whole (`files`: path and full content, tests "
               "included), not only the ones that change.")
WHOLE_ANSWER = ("Your edits could not be applied to the code. Answer with every file whole "
                "(`files`: path and full content, tests included).")


def _as(kind: type[CodeEdits], output: BaseModel) -> CodeEdits:
    # A user's own Model may answer with another type that has the same fields.
    return output if isinstance(output, kind) else kind.model_validate(output.model_dump())


def _paid(e: OutputValidationError, model: Model | None) -> Provenance:
    """What the failed calls cost, as a provenance (their spend is booked already)."""
    u = e.usage
    provider, _, name = (model.name if model else "?:?").partition(":")
    return Provenance(provider=provider, model=name, input_tokens=u.input_tokens,
                      output_tokens=u.output_tokens, cached_tokens=u.cached_tokens,
                      cache_write_tokens=u.cache_write_tokens, cost_usd=u.cost_usd,
                      calls=u.calls, estimated_calls=u.estimated_calls)


def repair_text(e: EditsNotApplied) -> str:
    """The message that asks once more for the edits that did not apply: which, why, and
    the files they touch as they are now (every other edit applied)."""
    failed = "\n".join(f"- {f}" for f in e.failures)
    paths = dict.fromkeys(f.path for f in e.failures)
    now = {f.path: f.content for f in e.code.files}
    shown = "\n\n".join(f"### {p}\n```\n{now[p]}\n```" for p in paths if p in now)
    return (f"These parts of your answer did not apply:\n{failed}\n\nEverything else was "
            "applied. Answer again with only what is still needed, against the files as they "
            "are now" + (f":\n\n{shown}" if shown else "."))
