"""Message <-> (JSON body, headers). Cheap and strict: any fault is a ``DecodeError``."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from pydantic import ValidationError

from swarmbus.protocols import (
    Message,
    Meta,
    Subject,
    SubjectError,
    TypeRegistry,
    UnknownTypeError,
    headers,
    registry,
)

from ._control import Reject

__all__ = ["DecodeError", "Envelope", "decode", "encode", "output_msg_id"]

M = TypeVar("M", bound=Message)

DecodeReason = Literal["undecodable", "invalid", "unknown_type", "oversize"]


class DecodeError(Reject):
    """The bytes on the wire are not a message we can take: dead-letter them."""

    def __init__(self, reason: DecodeReason, detail: str) -> None:
        super().__init__(detail, reason=reason)


@dataclass(frozen=True, slots=True)
class Envelope(Generic[M]):
    """A decoded message with where it came from (``subject``), what its headers say of
    it (``meta``) and the headers themselves."""

    message: M
    subject: Subject
    meta: Meta
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def workflow_id(self) -> str:
        return self.subject.workflow_id

    @property
    def topic(self) -> str:
        return self.subject.topic

    @property
    def msg_id(self) -> str:
        return self.meta.msg_id

    @property
    def causation_id(self) -> str | None:
        return self.meta.causation_id

    @property
    def sender(self) -> str | None:
        return self.meta.sender

    @property
    def round(self) -> int:
        return self.meta.round

    @property
    def model(self) -> str | None:
        return self.meta.model

    @property
    def workflow(self) -> str | None:
        """The hash of the workflow the run follows (``Swarm-Workflow``)."""
        return self.meta.workflow


def encode(message: Message, meta: Meta) -> tuple[bytes, dict[str, str]]:
    """Body and headers for ``message``. Raises ``TypeError`` for unregistered types."""
    if not message.swarm_type:
        raise TypeError(f"{type(message).__qualname__} is not registered with @message_type")
    return message.model_dump_json().encode(), meta.headers(message.swarm_type)


def decode(
    subject: str,
    data: bytes,
    hdrs: Mapping[str, str] | None,
    *,
    types: TypeRegistry = registry,
    max_bytes: int | None = None,
    fallback_id: str = "",
) -> Envelope[Message]:
    """Decode one message; raises ``DecodeError`` with the reason to dead-letter it."""
    hdrs = hdrs or {}
    if max_bytes is not None and len(data) > max_bytes:
        raise DecodeError("oversize", f"body of {len(data)} bytes exceeds {max_bytes}")
    try:
        subj = Subject.parse(subject)
    except SubjectError as e:
        raise DecodeError("invalid", str(e)) from None
    try:
        cls = types.resolve(hdrs.get(headers.TYPE), subj.topic)
    except UnknownTypeError as e:
        raise DecodeError("unknown_type", str(e)) from None
    try:
        message = cls.model_validate_json(data)
    except ValidationError as e:
        # JSON that does not parse at all is "undecodable"; JSON of the wrong shape "invalid".
        kinds = {err["type"] for err in e.errors()}
        reason: DecodeReason = "undecodable" if kinds & {"json_invalid", "json_type"} else "invalid"
        raise DecodeError(reason, _short(e)) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DecodeError("undecodable", str(e)[:500]) from None
    return Envelope(message=message, subject=subj,
                    meta=Meta.read(hdrs, fallback_id=fallback_id), headers=dict(hdrs))


def output_msg_id(input_id: str, agent: str, index: int) -> str:
    """Deterministic id of the ``index``-th output of ``agent`` handling ``input_id``.

    A handler that runs twice derives the same ids, so JetStream de-duplicates.
    """
    digest = hashlib.sha256(f"{input_id}\x00{agent}\x00{index}".encode()).hexdigest()
    return digest[:32]


def _short(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "<body>"
        parts.append(f"{loc}: {err['msg']}")
    more = e.error_count() - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
