"""NATS for swarmbus: connection, streams, codec, publish/consume, key-value,
the embedded server. Never imports ``swarmbus.agents``."""

from ._bus import (
    Bus,
    ConsumerSettings,
    PayloadTooLargeError,
    PublishResult,
    StoredMessage,
    StreamSettings,
)
from ._client import (
    CANCEL_BUCKET,
    WORKING,
    SwarmClient,
    WorkflowStatus,
    apply_event,
    cancel_flags,
)
from ._codec import DecodeError, Envelope, decode, encode, output_msg_id
from ._connect import BusUnavailableError, NatsSettings, connect
from ._consumer import ConsumerStats, Delivery, PullConsumer, RawHandler, dead_letter_worker
from ._control import DeadLetterReason, Reject, Retry
from ._deadletter import dead_letter
from ._embedded import EmbeddedServer, NatsServerNotFoundError, find_nats_server, free_port
from ._kv import KeyValueStore, WatchedKeys
from ._secrets import MASK, register_secret, registered_secrets, scrub, scrub_bytes

__all__ = (
    "CANCEL_BUCKET",
    "MASK",
    "WORKING",
    "Bus",
    "BusUnavailableError",
    "ConsumerSettings",
    "ConsumerStats",
    "DeadLetterReason",
    "DecodeError",
    "Delivery",
    "EmbeddedServer",
    "Envelope",
    "KeyValueStore",
    "NatsServerNotFoundError",
    "NatsSettings",
    "PayloadTooLargeError",
    "PublishResult",
    "PullConsumer",
    "RawHandler",
    "Reject",
    "Retry",
    "StoredMessage",
    "StreamSettings",
    "SwarmClient",
    "WatchedKeys",
    "WorkflowStatus",
    "apply_event",
    "cancel_flags",
    "connect",
    "dead_letter",
    "dead_letter_worker",
    "decode",
    "encode",
    "find_nats_server",
    "free_port",
    "output_msg_id",
    "register_secret",
    "registered_secrets",
    "scrub",
    "scrub_bytes",
)
