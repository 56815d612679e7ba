"""NATS for swarmbus: a ``Bus`` composed of the namespace's ``Streams``, a
``Publisher``, its key-value ``Buckets`` and its ``Consumers``; the codec, the
consume loop, stored workflows, the embedded server, and ``SwarmClient``. Never imports
``swarmbus.agents``; knows no role and no particular workflow."""

from ._bus import SCHEDULE, SCHEDULE_TARGET, Bus, StoredMessage
from ._client import (
    RunNotRetryableError,
    SwarmClient,
    UnknownWorkflowIdError,
    WorkflowIdTakenError,
)
from ._codec import DecodeError, Envelope, decode, encode, output_msg_id
from ._connect import BusUnavailableError, NatsSettings, connect
from ._consumer import ConsumerStats, Delivery, Handler, PullConsumer
from ._control import Reject, Retry
from ._deadletter import dead_letter
from ._deadletter_worker import dead_letter_worker
from ._durable import Consumers
from ._embedded import (
    DataDirInUseError,
    EmbeddedServer,
    NatsServerNotFoundError,
    PortTakenError,
    find_nats_server,
    free_port,
)
from ._kv import Buckets, KeyValueStore, WatchedKeys
from ._metrics import (
    COST_METRIC,
    OUTCOMES_METRIC,
    UNPRICED_METRIC,
    configure_metrics,
    destination_template,
    gen_ai_provider,
    metric_scope,
    model_call,
    model_call_failed,
    workflow_outcome,
)
from ._objects import OBJECTS_BUCKET, ArtifactStore
from ._publish import (
    EXPECT_FIRST,
    PayloadTooLargeError,
    Publisher,
    PublishResult,
    SubjectTakenError,
)
from ._secrets import MASK, register_secret, registered_secrets, scrub, scrub_bytes
from ._settings import ConsumerSettings, ConsumerStart, EnsuredConsumer, StreamSettings
from ._status import (
    AGENTS_BUCKET,
    AGENTS_STORAGE,
    AGENTS_TTL_S,
    CANCEL_BUCKET,
    DEADLINE_HEADER,
    WorkflowStatus,
    apply_event,
    cancel_flags,
    deadline_msg_id,
    live_agents,
    same_task,
    schedulable,
    serves,
)
from ._store import StoreGate, StoreUnavailableError, hold_publishes
from ._streams import Streams
from ._tracing import (
    CAPTURE_CONTENT,
    COST_ATTRIBUTE,
    capture_content,
    configure_tracing,
    inject_trace,
    process_span,
    tracer,
)
from ._workflows import WORKFLOWS_BUCKET, UnknownWorkflowError, WorkflowStore

__all__ = (
    "AGENTS_BUCKET",
    "AGENTS_STORAGE",
    "AGENTS_TTL_S",
    "CANCEL_BUCKET",
    "CAPTURE_CONTENT",
    "COST_ATTRIBUTE",
    "COST_METRIC",
    "DEADLINE_HEADER",
    "EXPECT_FIRST",
    "MASK",
    "OBJECTS_BUCKET",
    "OUTCOMES_METRIC",
    "SCHEDULE",
    "SCHEDULE_TARGET",
    "UNPRICED_METRIC",
    "WORKFLOWS_BUCKET",
    "ArtifactStore",
    "Buckets",
    "Bus",
    "BusUnavailableError",
    "ConsumerSettings",
    "ConsumerStart",
    "ConsumerStats",
    "Consumers",
    "DataDirInUseError",
    "DecodeError",
    "Delivery",
    "EmbeddedServer",
    "EnsuredConsumer",
    "Envelope",
    "Handler",
    "KeyValueStore",
    "NatsServerNotFoundError",
    "NatsSettings",
    "PayloadTooLargeError",
    "PortTakenError",
    "PublishResult",
    "Publisher",
    "PullConsumer",
    "Reject",
    "Retry",
    "RunNotRetryableError",
    "StoreGate",
    "StoreUnavailableError",
    "StoredMessage",
    "StreamSettings",
    "Streams",
    "SubjectTakenError",
    "SwarmClient",
    "UnknownWorkflowError",
    "UnknownWorkflowIdError",
    "WatchedKeys",
    "WorkflowIdTakenError",
    "WorkflowStatus",
    "WorkflowStore",
    "apply_event",
    "cancel_flags",
    "capture_content",
    "configure_metrics",
    "configure_tracing",
    "connect",
    "dead_letter",
    "dead_letter_worker",
    "deadline_msg_id",
    "decode",
    "destination_template",
    "encode",
    "find_nats_server",
    "free_port",
    "gen_ai_provider",
    "hold_publishes",
    "inject_trace",
    "live_agents",
    "metric_scope",
    "model_call",
    "model_call_failed",
    "output_msg_id",
    "process_span",
    "register_secret",
    "registered_secrets",
    "same_task",
    "schedulable",
    "scrub",
    "scrub_bytes",
    "serves",
    "tracer",
    "workflow_outcome",
)
