"""``Agent``: a long-lived consumer whose handlers are typed by the message they take."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import structlog

from swarmbus.bus import (
    Bus,
    ConsumerSettings,
    ConsumerStart,
    Delivery,
    Envelope,
    PublishResult,
    Reject,
    metric_scope,
    process_span,
)
from swarmbus.bus import output_msg_id as _output_msg_id
from swarmbus.protocols import (
    ConfigError,
    Message,
    Meta,
    check_topic,
    check_workflow_id,
    registry,
)

from ._run import current_run
from .models import Ledger, current_ledger

if TYPE_CHECKING:
    from ._run import Run

__all__ = ["Agent", "Context", "Middleware", "handles"]

M = TypeVar("M", bound=Message)
F = TypeVar("F", bound=Callable[..., Awaitable[None]])

_log = structlog.get_logger("swarmbus.agent")

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def handles(*topics: str) -> Callable[[F], F]:
    """Mark an ``async def on_x(self, msg: SomeMessage, ctx: Context[SomeMessage])``
    method as the handler of ``topics``. The message annotation is the contract:
    a message of another type on that topic is dead-lettered, never passed in."""
    for t in topics:
        check_topic(t)
    if not topics:
        raise ConfigError("@handles needs at least one topic")

    def deco(fn: F) -> F:
        fn._swarm_topics = topics  # type: ignore[attr-defined]
        return fn

    return deco


class Context(Generic[M]):
    """What a handler gets besides its message: where it came from, a bound
    logger, the delivery, and ``publish`` with deterministic message ids."""

    __slots__ = ("_index", "_log", "agent", "bus", "delivery", "envelope")

    def __init__(
        self, envelope: Envelope[M], agent: str, bus: Bus, delivery: Delivery | None = None
    ) -> None:
        self.envelope = envelope
        self.agent = agent
        self.bus = bus
        self.delivery = delivery or Delivery(1, 0)
        self._index = 0
        self._log: Any = None

    @property
    def deliveries(self) -> int:
        """How often this message has been delivered (1 on the first attempt)."""
        return self.delivery.delivered

    @property
    def log(self) -> Any:
        """A structlog logger bound to agent, workflow, topic and message id."""
        if self._log is None:  # bound on first use: most messages never log
            env = self.envelope
            self._log = _log.bind(
                agent=self.agent, workflow_id=env.workflow_id, topic=env.topic, msg_id=env.msg_id
            )
        return self._log

    @property
    def workflow_id(self) -> str:
        return self.envelope.workflow_id

    @property
    def namespace(self) -> str:
        return self.bus.namespace

    @property
    def round(self) -> int:
        return self.envelope.round

    @property
    def ledger(self) -> Ledger | None:
        """The model calls booked while handling this message (with ``Guards``)."""
        return current_ledger()

    @property
    def run(self) -> Run | None:
        """The run this message belongs to, with its limits, spend and ending (with
        ``Guards``, for a message that carries a ``WorkState``)."""
        return current_run()

    def output_id(self, index: int | None = None) -> str:
        """The deterministic id of this handler's next output (or of output ``index``)."""
        return _output_msg_id(self.envelope.msg_id, self.agent,
                              self._index if index is None else index)

    async def publish(
        self,
        message: Message,
        *,
        topic: str | None = None,
        workflow_id: str | None = None,
        round: int | None = None,
        model: str | None = None,
        workflow: str | None = None,
        first: bool = False,
        expect_last_seq: int | None = None,
        msg_id: str | None = None,
    ) -> PublishResult:
        """Publish an output (to this workflow unless ``workflow_id`` is given) and
        wait for the stream to confirm it.

        Its ``Nats-Msg-Id`` derives from the input's id, this agent and the
        output's index, so a handler that runs twice publishes each output once;
        ``msg_id`` gives it instead (an id any publisher derives alike: a fan-out's
        item or join, whichever handler publishes it).
        ``topic`` defaults to the message type's first default topic; ``workflow``
        (the ``Swarm-Workflow`` header) to the input's. ``first=True``: the server
        refuses it if its subject holds a message already (``SubjectTakenError``);
        ``expect_last_seq``: unless the subject's last message is at that sequence.
        """
        if topic is None:
            if not message.default_topics or message.default_topics[0].endswith(">"):
                raise ConfigError(f"{message.swarm_type} has no default topic: pass topic=")
            topic = message.default_topics[0]
        wf = check_workflow_id(workflow_id) if workflow_id else self.envelope.workflow_id
        if msg_id is None:
            msg_id = self.output_id()
            self._index += 1
        meta = Meta(msg_id, causation_id=self.envelope.msg_id, sender=self.agent,
                    round=self.envelope.round if round is None else round, model=model,
                    workflow=workflow or self.envelope.workflow)
        return await self.bus.publish(wf, topic, message, meta, first=first,
                                      expect_last_seq=expect_last_seq)


Next = Callable[[], Awaitable[None]]


class Middleware(Protocol):
    """Wraps every handler of an agent: ``await call_next()`` runs the rest.

    ``setup``/``aclose`` run with the agent's (open per-process resources there).
    """

    async def __call__(self, call_next: Next, message: Message, ctx: Context[Any]) -> None: ...

    async def setup(self, bus: Bus, agent: Agent) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Route:
    """A topic's handler and the message type it takes."""

    message_type: type[Message]
    method: Callable[[Any, Context[Any]], Awaitable[None]]


class Agent:
    """Base of every agent. Subclasses declare handlers with ``@handles``.

    ``name`` is the agent *type*: replicas with the same name share one durable
    consumer (work is load-balanced); different names each get every message.
    ``consumer`` tunes concurrency, ack wait, max deliveries and retries;
    ``middleware`` wraps every handler (``Guards()`` checks budget, deadline and
    cancel before every model call). ``start`` says where a new (or re-created)
    consumer begins: ``"new"`` (what comes next), ``"all"`` (the oldest message of
    its topics), ``"pending"`` (the oldest message of its topics this agent has
    not answered, in a workflow without a result: nothing waiting is skipped and
    nothing answered is redone).
    """

    name: str = ""
    version: ClassVar[str] = ""
    consumer: ConsumerSettings = ConsumerSettings()
    middleware: Sequence[Middleware] = ()
    start: ClassVar[ConsumerStart] = "new"
    replicas: int = 1
    """Pull loops on the shared consumer in this process (more processes scale further)."""

    def __init__(
        self,
        *,
        name: str | None = None,
        consumer: ConsumerSettings | None = None,
        replicas: int = 1,
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        self.name = name or type(self).name or _snake(type(self).__name__)
        if not _NAME.match(self.name):
            raise ConfigError(f"agent name {self.name!r}: use letters, digits, '_' and '-'")
        if consumer is not None:
            self.consumer = consumer
        if replicas < 1:
            raise ConfigError(f"replicas must be >= 1, got {replicas}")
        self.replicas = replicas
        if middleware is not None:
            self.middleware = tuple(middleware)
        self._routes = self.routes()

    @property
    def topics(self) -> list[str]:
        return sorted(self._routes)

    @property
    def durable(self) -> str:
        """The durable consumer this agent type pulls from: its ``name``, unless the type
        says otherwise (a step agent's is its role at its workflow, ``coder@code-review``,
        so two workflows with a role in common each keep their own work)."""
        return self.name

    @property
    def workflow_name(self) -> str:
        """The workflow this agent serves steps of ('' for an agent of no workflow)."""
        return ""

    def route_for(self, topic: str) -> Route | None:
        """The handler of ``topic`` (None: none). Override to take topics known only when
        a message comes (the step runtime takes every ``step.*`` topic of its role)."""
        return self._routes.get(topic)

    @property
    def model_name(self) -> str:
        """The model(s) this agent uses, for announcements (empty if none)."""
        return ""

    def routes(self) -> dict[str, Route]:
        """Topic -> handler; by default the ``@handles`` methods. Override to route
        topics known only at run time (the step runtime does)."""
        routes: dict[str, Route] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            topics = getattr(fn, "_swarm_topics", None)
            if not topics or fn is None:
                continue
            mtype = _message_param(type(self), fn)
            for topic in topics:
                if topic in routes:
                    raise ConfigError(f"{type(self).__name__}: two handlers for topic {topic!r}")
                routes[topic] = Route(mtype, getattr(self, attr))
        if not routes:
            raise ConfigError(f"{type(self).__name__} has no @handles methods")
        return routes

    async def setup(self, bus: Bus) -> None:
        """Called once before consuming (open clients, buckets); runs the middleware's."""
        for mw in self.middleware:
            await mw.setup(bus, self)

    async def aclose(self) -> None:
        """Called once after consuming stopped."""
        for mw in self.middleware:
            await mw.aclose()

    async def dispatch(self, bus: Bus, env: Envelope[Message], delivery: Delivery) -> None:
        """Run the handler of ``env``'s topic (through the middleware)."""
        route = self.route_for(env.topic)
        if route is None:
            raise Reject(f"{self.name} has no handler for topic {env.topic!r}")
        if not isinstance(env.message, route.message_type):
            raise Reject(
                f"{self.name} takes {route.message_type.swarm_type} on {env.topic!r}, "
                f"got {env.message.swarm_type}",
                reason="invalid",
            )
        ctx = Context(env, self.name, bus, delivery)
        # One span per delivery, a child of the sender's (its traceparent header).
        with process_span(f"invoke_agent {self.name}", env.headers, subject=str(env.subject),
                          msg_id=env.msg_id, delivered=delivery.delivered,
                          attributes={"gen_ai.operation.name": "invoke_agent",
                                      "gen_ai.agent.name": self.name,
                                      "swarmbus.workflow_id": env.workflow_id}), \
                metric_scope(agent=self.name, workflow=self.workflow_name):
            if not self.middleware:
                await route.method(env.message, ctx)
                return
            await self._through(0, route, env.message, ctx)

    async def _through(self, i: int, route: Route, msg: Message, ctx: Context[Any]) -> None:
        if i == len(self.middleware):
            await route.method(msg, ctx)
            return
        await self.middleware[i](lambda: self._through(i + 1, route, msg, ctx), msg, ctx)


def _message_param(owner: type, fn: Callable[..., Any]) -> type[Message]:
    try:
        hints = typing.get_type_hints(fn)
    except NameError as e:
        raise ConfigError(f"{owner.__name__}.{fn.__name__}: cannot resolve annotations: {e}") from e
    params = [p for p in inspect.signature(fn).parameters if p != "self"]
    if not params or params[0] not in hints:
        raise ConfigError(f"{owner.__name__}.{fn.__name__}: annotate the message parameter")
    mtype = hints[params[0]]
    if not (isinstance(mtype, type) and issubclass(mtype, Message)):
        raise ConfigError(f"{owner.__name__}.{fn.__name__}: {mtype!r} is not a Message type")
    if mtype not in registry:
        raise ConfigError(f"{mtype.__qualname__} is not registered: decorate it @message_type")
    return mtype


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
