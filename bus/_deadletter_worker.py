"""The consumer that turns JetStream's max-deliveries advisories into dead letters."""

from __future__ import annotations

from nats.aio.msg import Msg

from ._bus import Bus
from ._consumer import PullConsumer
from ._deadletter import ADVISORY_DURABLE, handle_max_deliveries_advisory, max_deliveries_filter
from ._delivery import Delivery
from ._settings import ConsumerSettings

__all__ = ["dead_letter_worker"]


def dead_letter_worker(bus: Bus, *, settings: ConsumerSettings | None = None) -> PullConsumer:
    """The consumer that turns max-deliveries advisories into dead letters.

    Advisories are captured in a stream (see ``Bus.setup``), so one raised while
    no process was listening is still handled once any swarm process runs.
    """

    async def handle(msg: Msg, delivery: Delivery) -> None:
        await handle_max_deliveries_advisory(bus, msg)

    return PullConsumer(
        bus, ADVISORY_DURABLE, None, filters=[max_deliveries_filter(bus)],
        stream=bus.advisory_stream, settings=settings or ConsumerSettings(concurrency=4),
        dead_letter_on_reject=False, start="all", _raw=handle,
    )
