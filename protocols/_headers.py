"""Header names of the envelope, and ``Meta``: the one value a message's headers carry
beside its type. A peer can route on these without decoding the body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CAUSATION_ID",
    "MODEL",
    "MSG_ID",
    "ROUND",
    "SENDER",
    "TYPE",
    "WORKFLOW",
    "Meta",
]

TYPE = "Swarm-Type"
MSG_ID = "Nats-Msg-Id"
CAUSATION_ID = "Swarm-Causation-Id"
SENDER = "Swarm-Sender"
ROUND = "Swarm-Round"
MODEL = "Swarm-Model"
WORKFLOW = "Swarm-Workflow"
"""The hash of the compiled workflow a work message or task follows."""


@dataclass(frozen=True, slots=True)
class Meta:
    """What a message's headers say about it, beside its type: its id (``Nats-Msg-Id``:
    JetStream stores a repeat once), the message that caused it, the agent type that
    sent it, the run's round, the model that produced it, and the hash of the workflow
    the run follows. Made once per message, read once per delivery."""

    msg_id: str
    causation_id: str | None = None
    sender: str | None = None
    round: int = 0
    model: str | None = None
    workflow: str | None = None

    def headers(self, swarm_type: str) -> dict[str, str]:
        """The headers to send with a message of type ``swarm_type``."""
        out = {TYPE: swarm_type, MSG_ID: self.msg_id, ROUND: str(self.round)}
        if self.causation_id:
            out[CAUSATION_ID] = self.causation_id
        if self.sender:
            out[SENDER] = self.sender
        if self.model:
            out[MODEL] = self.model
        if self.workflow:
            out[WORKFLOW] = self.workflow
        return out

    @classmethod
    def read(cls, hdrs: Mapping[str, str], *, fallback_id: str = "") -> Meta:
        """The meta of received headers (``fallback_id`` when it has no id; a round that
        is not a number is 0)."""
        try:
            round_ = int(hdrs.get(ROUND, "0"))
        except ValueError:
            round_ = 0
        return cls(msg_id=hdrs.get(MSG_ID) or fallback_id, causation_id=hdrs.get(CAUSATION_ID),
                   sender=hdrs.get(SENDER), round=round_, model=hdrs.get(MODEL),
                   workflow=hdrs.get(WORKFLOW))
