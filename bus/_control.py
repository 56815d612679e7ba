"""Control-flow decisions a handler raises: retry later, or dead-letter now."""

from __future__ import annotations

from swarmbus.protocols import ControlFlow, DeadLetterReason

__all__ = ["Reject", "Retry"]


class Retry(ControlFlow):
    """Nak the message so it is redelivered after ``delay_s`` (default: the backoff)."""

    def __init__(self, reason: str = "", *, delay_s: float | None = None) -> None:
        super().__init__(reason or "retry requested")
        self.delay_s = delay_s


class Reject(ControlFlow):
    """This message can never succeed: publish it to ``deadletter`` and terminate it."""

    def __init__(self, detail: str, *, reason: DeadLetterReason = "rejected") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: DeadLetterReason = reason
        self.detail = detail
