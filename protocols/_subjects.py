"""Subject names: ``swarm.<namespace>.<workflow_id>.<topic>``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ._errors import ConfigError

__all__ = [
    "Subject",
    "SubjectError",
    "advisory_stream_name",
    "check_namespace",
    "check_topic",
    "check_workflow_id",
    "namespace_filter",
    "stream_name",
    "subject",
    "timer_filter",
    "timer_stream_name",
    "timer_subject",
    "topic_filter",
    "workflow_filter",
]

PREFIX = "swarm"
TIMER_PREFIX = "swarmtimer"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_NAMESPACE = re.compile(r"^[a-z0-9_-]{1,32}$")
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$")


class SubjectError(ConfigError):
    """A namespace, workflow id, topic or subject that does not fit the scheme."""


def _check(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.match(value):
        raise SubjectError(
            f"invalid {kind} {value!r}: use letters, digits, '_' and '-'"
            + (" (lower case, at most 32)" if kind == "namespace" else "")
            + (" (tokens joined by '.')" if kind == "topic" else "")
        )
    return value


@lru_cache(maxsize=64)  # a process uses a few: every subject parsed checks them again
def check_namespace(namespace: str) -> str:
    return _check("namespace", namespace, _NAMESPACE)


def check_workflow_id(workflow_id: str) -> str:
    return _check("workflow id", workflow_id, _TOKEN)


@lru_cache(maxsize=1024)
def check_topic(topic: str) -> str:
    return _check("topic", topic, _TOPIC)


@dataclass(frozen=True, slots=True)
class Subject:
    namespace: str
    workflow_id: str
    topic: str

    def __str__(self) -> str:
        return f"{PREFIX}.{self.namespace}.{self.workflow_id}.{self.topic}"

    @property
    def prefix(self) -> str:
        """``swarm.<namespace>.``: put a workflow id and topic after it."""
        return f"{PREFIX}.{self.namespace}."

    @classmethod
    def parse(cls, value: str) -> Subject:
        """Split a concrete subject; raises ``SubjectError`` if it is not ours."""
        parts = value.split(".")
        if len(parts) < 4 or parts[0] != PREFIX:
            raise SubjectError(f"not a swarm subject: {value!r}")
        return cls(
            check_namespace(parts[1]), check_workflow_id(parts[2]), check_topic(".".join(parts[3:]))
        )


def subject(namespace: str, workflow_id: str, topic: str) -> str:
    """The concrete subject for one topic of one workflow."""
    check_namespace(namespace)
    check_workflow_id(workflow_id)
    check_topic(topic)
    return f"{PREFIX}.{namespace}.{workflow_id}.{topic}"


def topic_filter(namespace: str, topic: str) -> str:
    """Every workflow's messages on one topic: ``swarm.<ns>.*.<topic>``."""
    return f"{PREFIX}.{check_namespace(namespace)}.*.{check_topic(topic)}"


def workflow_filter(namespace: str, workflow_id: str) -> str:
    """One workflow's whole history: ``swarm.<ns>.<id>.>``."""
    return f"{PREFIX}.{check_namespace(namespace)}.{check_workflow_id(workflow_id)}.>"


def namespace_filter(namespace: str) -> str:
    return f"{PREFIX}.{check_namespace(namespace)}.>"


def stream_name(namespace: str) -> str:
    """The JetStream stream that holds a namespace: ``SWARM_<NAMESPACE>``."""
    return "SWARM_" + check_namespace(namespace).upper()


def advisory_stream_name(namespace: str) -> str:
    """Stream capturing the namespace's max-deliveries advisories (for dead-lettering):
    ``SWARMADV_<NAMESPACE>``, never the name of another namespace's stream."""
    return "SWARMADV_" + check_namespace(namespace).upper()


def timer_stream_name(namespace: str) -> str:
    """The stream that holds a namespace's scheduled messages: ``SWARMTIMER_<NAMESPACE>``
    (subjects ``swarmtimer.<ns>.>``). The namespace's stream takes what they become."""
    return "SWARMTIMER_" + check_namespace(namespace).upper()


def timer_subject(namespace: str, workflow_id: str, topic: str) -> str:
    """A subject of the timer stream: ``swarmtimer.<ns>.<workflow_id>.<topic>``."""
    check_namespace(namespace)
    check_workflow_id(workflow_id)
    check_topic(topic)
    return f"{TIMER_PREFIX}.{namespace}.{workflow_id}.{topic}"


def timer_filter(namespace: str, topic: str | None = None) -> str:
    """Every workflow's timer subjects of one topic, ``swarmtimer.<ns>.*.<topic>``; or,
    without a topic, all of the namespace's, ``swarmtimer.<ns>.>``."""
    if topic is None:
        return f"{TIMER_PREFIX}.{check_namespace(namespace)}.>"
    return f"{TIMER_PREFIX}.{check_namespace(namespace)}.*.{check_topic(topic)}"
