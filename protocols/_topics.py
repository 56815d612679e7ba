"""Topic names: the last tokens of ``swarm.<namespace>.<workflow_id>.<topic>``.

Stated once here; every layer (the client, the runtime, the supervisor) uses these.
"""

from __future__ import annotations

__all__ = [
    "CANCEL",
    "DEADLETTER",
    "DEADLINE",
    "DEADLINE_TIMER",
    "RESULT",
    "RESUME",
    "STEP_PREFIX",
    "TASK",
    "step_of_topic",
    "step_topic",
]

TASK = "task"
"""The kick-off (``swarmbus.TaskRequest``)."""
RESULT = "result"
"""The run's one result (``swarmbus.TaskResult``)."""
DEADLETTER = "deadletter"
"""A message no handler could take (``swarmbus.DeadLetter``)."""
CANCEL = "cancel"
"""A request to cancel the run (``swarmbus.Cancel``); the cancel flag is set with it."""
DEADLINE = "deadline"
"""The run's deadline has come (``swarmbus.Deadline``), published by the server's
message scheduler from ``DEADLINE_TIMER`` at the deadline."""
DEADLINE_TIMER = "timer.deadline"
"""Holds the run's scheduled deadline message (header ``Nats-Schedule: @at <time>``)
until it fires; a later one replaces it."""
RESUME = "resume"
"""A run that ended resumes (``swarmbus.Resume``): its last result is superseded."""
STEP_PREFIX = "step."


def step_topic(step_id: str) -> str:
    """The topic a step's work is published on: ``step.<id>``."""
    return STEP_PREFIX + step_id


def step_of_topic(topic: str) -> str | None:
    """The step id of a ``step.<id>`` topic, else None."""
    return topic[len(STEP_PREFIX):] if topic.startswith(STEP_PREFIX) else None
