"""Versioned type names for messages, and the registry that maps them to models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from ._errors import SwarmbusError

__all__ = [
    "Message",
    "TypeRegistry",
    "UnknownTypeError",
    "data_type",
    "message_type",
    "registry",
]


class Message(BaseModel):
    """Base of every message on the bus.

    Extra fields sent by newer peers are kept (``model_extra``) and sent on,
    never rejected. Subclasses get their wire name from ``@message_type``.
    """

    model_config = ConfigDict(extra="allow", frozen=False)

    swarm_type: ClassVar[str] = ""
    """Versioned wire name, e.g. ``swarmbus.DesignSpec/1`` (set by ``@message_type``)."""
    default_topics: ClassVar[tuple[str, ...]] = ()
    """Topics a peer may publish this type on without the ``Swarm-Type`` header."""


M = TypeVar("M", bound=type[Message])
D = TypeVar("D", bound=type[BaseModel])


class UnknownTypeError(SwarmbusError, LookupError):
    """A type name (or topic without a type header) that no registered model matches."""


class TypeRegistry:
    """Maps ``name/version`` to a message model, header-less topics to a default type,
    and data type names (the artifacts a workflow step produces) to their models.

    ``registry`` is the process-wide instance that ``@message_type`` and
    ``@data_type`` fill; users register their own types the same way. A topic
    ending in ``.>`` (``step.>``) matches every topic below it.
    """

    def __init__(self) -> None:
        self._types: dict[str, type[Message]] = {}
        self._by_topic: dict[str, type[Message]] = {}
        self._patterns: list[tuple[str, type[Message]]] = []
        self._data: dict[str, type[BaseModel]] = {}
        self._data_latest: dict[str, str] = {}

    def register(
        self, cls: type[Message], name: str, version: int, topics: tuple[str, ...] = ()
    ) -> None:
        if "/" in name or not name:
            raise ValueError(f"type name must be non-empty without '/': {name!r}")
        if version < 1:
            raise ValueError(f"type version must be >= 1, got {version}")
        wire = f"{name}/{version}"
        existing = self._types.get(wire)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{wire} is already registered to {existing.__qualname__}")
        for topic in topics:
            other = self._by_topic.get(topic)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"topic {topic!r} already implies {other.swarm_type}: a header-less message "
                    f"must have one meaning; publish {wire} with its Swarm-Type header instead"
                )
        cls.swarm_type = wire
        cls.default_topics = topics
        self._types[wire] = cls
        for topic in topics:
            self._by_topic[topic] = cls
            if topic.endswith(".>"):
                self._patterns.append((topic[:-1], cls))

    def register_data(self, cls: type[BaseModel], name: str, version: int) -> None:
        """Register an artifact (data) type under ``name/version``; ``name`` alone then
        resolves to its highest registered version. Raises ``ValueError`` if taken."""
        if "/" in name or not name:
            raise ValueError(f"type name must be non-empty without '/': {name!r}")
        if version < 1:
            raise ValueError(f"type version must be >= 1, got {version}")
        wire = f"{name}/{version}"
        existing = self._data.get(wire)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{wire} is already registered to {existing.__qualname__}")
        self._data[wire] = cls
        latest = self._data_latest.get(name)
        if latest is None or int(latest.rsplit("/", 1)[1]) < version:
            self._data_latest[name] = wire
        cls.__swarm_data_type__ = wire  # type: ignore[attr-defined]

    def resolve_data(self, name: str) -> type[BaseModel]:
        """The data type for ``name`` or ``name/version``; raises ``UnknownTypeError``."""
        wire = name if "/" in name else self._data_latest.get(name, "")
        cls = self._data.get(wire)
        if cls is None:
            known = ", ".join(sorted(self._data_latest)) or "none"
            raise UnknownTypeError(f"unknown data type {name!r} (registered: {known})")
        return cls

    def data_type_name(self, cls: type[BaseModel]) -> str | None:
        """The registered ``name/version`` of a data type, or None."""
        wire = getattr(cls, "__swarm_data_type__", None)
        return wire if isinstance(wire, str) and self._data.get(wire) is cls else None

    def data_types(self) -> dict[str, type[BaseModel]]:
        return dict(sorted(self._data.items()))

    def resolve(self, type_name: str | None, topic: str) -> type[Message]:
        """The model for a ``Swarm-Type`` header value, or for the topic when it is absent."""
        if type_name:
            cls = self._types.get(type_name)
            if cls is None:
                raise UnknownTypeError(f"unknown message type {type_name!r}")
            return cls
        cls = self._by_topic.get(topic)
        if cls is None:
            for prefix, candidate in self._patterns:
                if topic.startswith(prefix):
                    return candidate
            raise UnknownTypeError(f"no Swarm-Type header and topic {topic!r} has no default type")
        return cls

    def get(self, type_name: str) -> type[Message] | None:
        return self._types.get(type_name)

    def __iter__(self) -> Iterator[type[Message]]:
        return iter(sorted(self._types.values(), key=lambda c: c.swarm_type))

    def __contains__(self, cls: object) -> bool:
        return isinstance(cls, type) and self._types.get(getattr(cls, "swarm_type", "")) is cls

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        """JSON Schema of every registered type, keyed by wire name."""
        out: dict[str, dict[str, Any]] = {}
        for cls in self:
            schema = cls.model_json_schema()
            schema["x-swarm-type"] = cls.swarm_type
            if cls.default_topics:
                schema["x-swarm-default-topics"] = list(cls.default_topics)
            out[cls.swarm_type] = schema
        return out


registry = TypeRegistry()


def message_type(
    name: str, *, version: int = 1, topics: tuple[str, ...] = (), into: TypeRegistry | None = None
) -> Callable[[M], M]:
    """Class decorator: register a ``Message`` subclass under ``name/version``.

    ``topics`` makes it the type assumed for header-less messages on those topics.
    Raises ``ValueError`` if the wire name, or one of the topics, is taken by
    another class.
    """

    def deco(cls: M) -> M:
        (into or registry).register(cls, name, version, topics)
        return cls

    return deco


def data_type(
    name: str, *, version: int = 1, into: TypeRegistry | None = None
) -> Callable[[D], D]:
    """Class decorator: register a pydantic model as an artifact type ``name/version``,
    so a workflow can name it (``artifacts: {design: swarmbus.Design}``)."""

    def deco(cls: D) -> D:
        (into or registry).register_data(cls, name, version)
        return cls

    return deco
