"""Header names of the envelope. A peer can route on these without decoding the body."""

from __future__ import annotations

__all__ = [
    "CAUSATION_ID",
    "MODEL",
    "MSG_ID",
    "ROUND",
    "SENDER",
    "TYPE",
    "WORKFLOW",
]

TYPE = "Swarm-Type"
MSG_ID = "Nats-Msg-Id"
CAUSATION_ID = "Swarm-Causation-Id"
SENDER = "Swarm-Sender"
ROUND = "Swarm-Round"
MODEL = "Swarm-Model"
WORKFLOW = "Swarm-Workflow"
"""The hash of the compiled workflow a work message or task follows."""
