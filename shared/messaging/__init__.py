"""Events over Kafka, split by role as FastStream splits its own package.

- ``publisher``: publishing, one event or a batch, keyed by model name.
- ``idempotency``: which events a service already handled (Redis markers).
- ``subscriber``: at-least-once consumption, retries, outage rewinds.
- ``batch``: the same guarantees for handlers that take a poll at a time (``subscribe_batch``).
- ``dead_letters``: parking an event that cannot be handled, with its reason.
- ``health``: what a service's subscriptions need before it is ready.

Offsets are committed only after a handler finished (``AckPolicy.NACK_ON_ERROR``:
FastStream's default would commit before the handler runs). A handler is
skipped when Redis already holds the event's ``done`` marker, which is written
only after the work succeeded. An event that does not validate, or whose
handler keeps failing, is parked on ``<topic>.dlq`` with the original bytes
and the reason in headers, then committed, so it never blocks its partition.
Outages of Redis or the broker are different: the event is not at fault, so
it is not dead-lettered; the offset is rewound and the event retried later.
A subscription that dead-letters every event it reads makes the service not
ready (``SubscriptionHealth``): the fault is the service's, not the events'.
"""

from shared.messaging.dead_letters import correlation_id_of, dead_letter
from shared.messaging.health import (
    DEAD_LETTER_STREAK,
    HEARTBEAT_INTERVAL_MS,
    ConsumerContext,
    SubscriptionHealth,
)
from shared.messaging.idempotency import IdempotencyStore, ProcessedEvents
from shared.messaging.publisher import (
    BATCH_BYTES,
    PRODUCER_MAX_BATCH_BYTES,
    BatchEventPublisher,
    EventPublisher,
    KafkaEventPublisher,
    message_key,
)
from shared.messaging.subscriber import OUTAGE_ERRORS, Handler, subscribe, subscribe_broadcast

__all__ = [
    "BATCH_BYTES",
    "DEAD_LETTER_STREAK",
    "HEARTBEAT_INTERVAL_MS",
    "OUTAGE_ERRORS",
    "PRODUCER_MAX_BATCH_BYTES",
    "BatchEventPublisher",
    "ConsumerContext",
    "EventPublisher",
    "Handler",
    "IdempotencyStore",
    "KafkaEventPublisher",
    "ProcessedEvents",
    "SubscriptionHealth",
    "correlation_id_of",
    "dead_letter",
    "message_key",
    "subscribe",
    "subscribe_broadcast",
]
