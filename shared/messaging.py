"""At-least-once consumption with idempotency and dead letters, on FastStream's Kafka broker.

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

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol, TypeVar

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaPublishMessage
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import DependencyUnavailableError, FlywheelError
from shared.events import Event, Topic, consumer_group, dead_letter_topic, topic_name
from shared.logging import correlation_id_var
from shared.metrics import MessagingMetrics

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
Handler = Callable[[E], Awaitable[None]]

#: Errors meaning "a dependency is down", not "this event is bad".
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    DependencyUnavailableError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


class EventPublisher(Protocol):
    """Publishes events; the port every service's core-facing code uses."""

    async def publish(self, event: Event) -> None:
        """Publish one event on its topic."""


class BatchEventPublisher(EventPublisher, Protocol):
    """Also publishes many events in few requests (high-volume producers)."""

    async def publish_batch(self, events: Sequence[Event]) -> None:
        """Publish ``events`` all or none (a failure may leave some sent: at least once)."""


#: Bytes of encoded events per batch request, under the producer's ``max_batch_size``.
BATCH_BYTES = 512 * 1024
#: The producer's per-partition batch buffer (aiokafka's default is 16 KiB).
PRODUCER_MAX_BATCH_BYTES = 1024 * 1024


def message_key(event: Event) -> bytes:
    """The Kafka key of ``event``: its model, so one model's events keep their order in one
    partition (the correlation id for the rare event that names no model)."""
    model_name = getattr(event, "model_name", None)
    return (model_name or event.correlation_id).encode()


class KafkaEventPublisher:
    """Publishes events as JSON on their topic, keyed by model name."""

    def __init__(self, broker: KafkaBroker, service: str, metrics: MessagingMetrics) -> None:
        self._broker = broker
        self._service = service
        self._metrics = metrics

    async def publish(self, event: Event) -> None:
        """Publish one event on its topic."""
        await self._broker.publish(
            event.model_dump_json().encode(),
            topic=topic_name(event.topic),
            key=message_key(event),
            headers={"content-type": "application/json", "x-event-type": event.type_name()},
            correlation_id=event.correlation_id,
        )
        self._metrics.published.labels(self._service, topic_name(event.topic)).inc()

    async def publish_batch(self, events: Sequence[Event]) -> None:
        """Publish ``events`` as few batch requests: one per topic, type and model, by size.

        A batch costs the client about a third of the CPU of one request per event.
        Each record keeps its model key, and each batch goes to the partition that
        key hashes to, as a single ``publish`` of it would: one model's events stay
        in one partition, in order, whichever path published them.
        """
        for group, bodies in _batches(events):
            await self._broker.publish_batch(
                *(KafkaPublishMessage(body, key=group.key) for body in bodies),
                topic=group.topic,
                partition=await self._partition(group.topic, group.key),
                headers={"content-type": "application/json", "x-event-type": group.type_name},
            )
            self._metrics.published.labels(self._service, group.topic).inc(len(bodies))

    async def _partition(self, topic: str, key: bytes) -> int | None:
        """The partition the producer's default partitioner gives ``key`` on ``topic``.

        A batch is sent to one partition and aiokafka picks a random one for it,
        so the keyed choice is made here. None on FastStream's in-memory test
        broker (no producer, no partitions).
        """
        # FastStream keeps the aiokafka producer behind its own wrapper; no public handle.
        producer = getattr(getattr(self._broker, "_producer", None), "_producer", None)
        client = getattr(producer, "producer", None)
        if not isinstance(client, AIOKafkaProducer):
            return None
        partitions = sorted(await client.partitions_for(topic))
        chosen: int = DefaultPartitioner()(key, partitions, partitions)
        return chosen


class _Batch(NamedTuple):
    topic: str
    type_name: str
    key: bytes


def _batches(events: Sequence[Event]) -> list[tuple[_Batch, list[bytes]]]:
    """Encoded events grouped by (topic, type, key) in order, each group cut at BATCH_BYTES."""
    groups: dict[_Batch, list[list[bytes]]] = {}
    sizes: dict[_Batch, int] = {}
    for event in events:
        group = _Batch(topic_name(event.topic), event.type_name(), message_key(event))
        body = event.model_dump_json().encode()
        chunks = groups.setdefault(group, [[]])
        if chunks[-1] and sizes[group] + len(body) > BATCH_BYTES:
            chunks.append([])
            sizes[group] = 0
        chunks[-1].append(body)
        sizes[group] = sizes.get(group, 0) + len(body)
    return [(group, chunk) for group, chunks in groups.items() for chunk in chunks]


class IdempotencyStore(Protocol):
    """Remembers which event ids a service has handled."""

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was handled already."""

    async def mark(self, event_id: str) -> None:
        """Remember that ``event_id`` was handled."""


class ProcessedEvents:
    """Redis markers of handled event ids, so a redelivered event is a no-op."""

    def __init__(self, redis: Redis, service: str, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = f"flywheel:{service}:done:"
        self._ttl_s = ttl_s

    async def seen(self, event_id: str) -> bool:
        """Whether this service already handled ``event_id``."""
        return bool(await self._redis.exists(self._prefix + event_id))

    async def mark(self, event_id: str) -> None:
        """Remember that ``event_id`` was handled."""
        await self._redis.set(self._prefix + event_id, b"1", ex=self._ttl_s)

    async def seen_many(self, event_ids: list[str]) -> set[str]:
        """The ids among ``event_ids`` already handled: one round trip for a whole batch."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.exists(self._prefix + event_id)
            found = await pipe.execute()
        return {e for e, hit in zip(event_ids, found, strict=True) if hit}

    async def mark_many(self, event_ids: list[str]) -> None:
        """Remember a whole batch of handled ids in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.set(self._prefix + event_id, b"1", ex=self._ttl_s)
            await pipe.execute()


#: Dead letters in a row on one subscription after which the service reports not ready.
DEAD_LETTER_STREAK = 20
#: Each subscription is a consumer of the service's group, so a start-up is one
#: rebalance per subscription, and each completes only when every member has
#: heartbeated into it: aiokafka's 3 s default made a router's last subscription
#: wait ~15 s. Well under a third of the 10 s session timeout, as Kafka requires.
HEARTBEAT_INTERVAL_MS = 500


class SubscriptionHealth:
    """Which subscriptions cannot do their job yet, and why.

    A handler that fails on every event (a corrupt saved state, a missing
    dependency it does not know is one) empties its topic into the DLQ while lag
    stays at zero: only readiness can tell. ``DEAD_LETTER_STREAK`` dead letters
    in a row make a subscription failing; one handled event makes it well again.
    A subscription whose consumer has not yet joined its group (been assigned
    its partitions, possibly none) reads nothing: the service is not ready until
    every one has, or an operator action sent at start-up would wait unseen.
    """

    def __init__(self, streak: int = DEAD_LETTER_STREAK) -> None:
        self._streak = streak
        self._failing: dict[str, tuple[int, str]] = {}
        self._unassigned: set[str] = set()

    def listener(self, topic: str) -> ConsumerRebalanceListener:
        """The rebalance listener of ``topic``'s consumer: ready once its group assigned it."""
        self._unassigned.add(topic)
        return _FirstAssignment(lambda: self.assigned(topic))

    def assigned(self, topic: str) -> None:
        """``topic``'s consumer joined its group: it reads whatever it was assigned."""
        self._unassigned.discard(topic)

    @property
    def waiting(self) -> frozenset[str]:
        """The topics whose consumer has not joined its group yet."""
        return frozenset(self._unassigned)

    def handled(self, topic: str) -> None:
        """An event of ``topic`` was handled: its subscription works."""
        self._failing.pop(topic, None)

    def dead_lettered(self, topic: str, reason: str) -> None:
        """An event of ``topic`` went to the DLQ for ``reason``."""
        count, _ = self._failing.get(topic, (0, ""))
        self._failing[topic] = (count + 1, reason)

    def problems(self) -> list[str]:
        """One line per subscription not yet assigned or dead-lettering its last events."""
        waiting = [f"waiting for the consumer group to assign {t}" for t in sorted(self.waiting)]
        return waiting + [
            f"dead-lettering every event on {topic}: {reason}"
            for topic, (count, reason) in sorted(self._failing.items())
            if count >= self._streak
        ]


class _FirstAssignment(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Calls ``on_assigned`` after each assignment (later ones change nothing)."""

    def __init__(self, on_assigned: Callable[[], None]) -> None:
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._on_assigned()


@dataclass(frozen=True)
class ConsumerContext:
    """What every subscription of one service needs."""

    service: str
    broker: KafkaBroker
    processed: IdempotencyStore
    metrics: MessagingMetrics
    max_attempts: int = 3
    retry_backoff_s: float = 0.5
    outage_backoff_s: float = 1.0
    instance: str | None = None
    #: Shared by the copies ``replace`` makes, so one service has one view of its subscriptions.
    health: SubscriptionHealth = field(default_factory=SubscriptionHealth)

    @property
    def group_id(self) -> str:
        """One consumer group per service (per replica for broadcast subscriptions)."""
        base = consumer_group(self.service)
        return f"{base}-{self.instance}" if self.instance else base


class _NothingProcessed:
    """Idempotency for broadcast handlers: none, they converge by nature."""

    async def seen(self, event_id: str) -> bool:
        return False

    async def mark(self, event_id: str) -> None:
        return None


def subscribe(ctx: ConsumerContext, topic: Topic, event_type: type[E], handle: Handler[E]) -> None:
    """Register ``handle`` for ``topic`` with commit-after-success, dedup and dead letters."""

    async def on_message(message: KafkaMessage) -> None:
        await _consume(ctx, topic, event_type, handle, message)

    on_message.__name__ = f"{ctx.service}_{topic.name.lower()}"
    ctx.broker.subscriber(
        topic_name(topic),
        group_id=ctx.group_id,
        # A replica's own group starts at the end: it reads current state at start-up.
        auto_offset_reset="latest" if ctx.instance else "earliest",
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        listener=ctx.health.listener(topic_name(topic)),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title=f"{ctx.service}:{topic_name(topic)}",
        description=event_type.__doc__,
    )(on_message)


def subscribe_broadcast(
    ctx: ConsumerContext, topic: Topic, event_type: type[E], handle: Handler[E]
) -> None:
    """Like ``subscribe``, but every replica of the service receives every event.

    Each replica joins a consumer group of its own, so a routing change reaches
    all gateways, not one of them. Handlers must converge by nature (apply the
    latest state), as a per-service idempotency marker would hide the event from
    the other replicas.
    """
    replica = replace(ctx, processed=_NothingProcessed(), instance=uuid.uuid4().hex[:12])
    subscribe(replica, topic, event_type, handle)


async def _consume(
    ctx: ConsumerContext,
    topic: Topic,
    event_type: type[E],
    handle: Handler[E],
    message: KafkaMessage,
) -> None:
    raw: bytes = message.body
    try:
        event = event_type.model_validate_json(raw)
    except ValidationError as error:
        summary = _validation_summary(error)
        await dead_letter(ctx, topic, raw, "invalid", summary, correlation_id_of(raw))
        return
    token = correlation_id_var.set(event.correlation_id)
    try:
        await _handle_once(ctx, topic, event, handle, raw)
    finally:
        correlation_id_var.reset(token)


async def _handle_once(
    ctx: ConsumerContext, topic: Topic, event: E, handle: Handler[E], raw: bytes
) -> None:
    try:
        if await ctx.processed.seen(event.event_id):
            log.info("duplicate event ignored", extra={"event_id": event.event_id})
            ctx.metrics.consumed.labels(ctx.service, topic_name(topic), "duplicate").inc()
            return
        started = time.perf_counter()
        outcome = await _run_with_retries(ctx, topic, event, handle, raw)
        ctx.metrics.handler_seconds.labels(ctx.service, topic_name(topic)).observe(
            time.perf_counter() - started
        )
        await ctx.processed.mark(event.event_id)
        ctx.metrics.consumed.labels(ctx.service, topic_name(topic), outcome).inc()
    except OUTAGE_ERRORS as error:
        # Not the event's fault: rewind (NACK) and try again once the dependency is back.
        log.warning("dependency unavailable, will retry", extra={"error": repr(error)})
        await asyncio.sleep(ctx.outage_backoff_s)
        raise


async def _run_with_retries(
    ctx: ConsumerContext, topic: Topic, event: E, handle: Handler[E], raw: bytes
) -> str:
    """Run the handler; return "handled" or, after the last failed attempt, "dead_lettered"."""
    for attempt in range(1, ctx.max_attempts + 1):
        try:
            await handle(event)
            ctx.health.handled(topic_name(topic))
            return "handled"
        except OUTAGE_ERRORS:
            raise
        except Exception as error:
            retryable = not isinstance(error, FlywheelError) or error.retryable
            log.warning(
                "handler failed",
                extra={"attempt": attempt, "error": repr(error), "event_id": event.event_id},
            )
            if not retryable or attempt == ctx.max_attempts:
                reason = "rejected" if not retryable else "failed"
                text = f"{type(error).__name__}: {error}"
                await dead_letter(ctx, topic, raw, reason, text, event.correlation_id)
                return "dead_lettered"
            await asyncio.sleep(ctx.retry_backoff_s * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


async def dead_letter(
    ctx: ConsumerContext,
    topic: Topic,
    raw: bytes,
    reason: str,
    error: str,
    correlation_id: str | None = None,
) -> None:
    """Park ``raw`` on the topic's dead-letter topic, with the reason in headers.

    The record keeps the event's correlation id (header and key), so the trace of
    a turn of the loop leads to its dead letter; FastStream would make up a new one.
    """
    log.error(
        "event dead-lettered", extra={"topic": topic_name(topic), "reason": reason, "error": error}
    )
    await ctx.broker.publish(
        raw,
        topic=dead_letter_topic(topic),
        key=correlation_id.encode() if correlation_id else None,
        headers={
            "x-error": error[:2000],
            "x-error-reason": reason,
            "x-original-topic": topic_name(topic),
            "x-consumer-group": ctx.group_id,
        },
        correlation_id=correlation_id,
    )
    ctx.metrics.dead_letters.labels(ctx.service, topic_name(topic), reason).inc()
    ctx.health.dead_lettered(topic_name(topic), f"{reason}: {error}"[:500])


def correlation_id_of(raw: bytes) -> str | None:
    """The correlation id in an event that did not validate, when its envelope has one."""
    try:
        found = json.loads(raw).get("correlation_id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and found else None


def _validation_summary(error: ValidationError) -> str:
    """One line per bad field: where it is and what is wrong with it."""
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or '<body>'}: {item['msg']}"
        for item in error.errors(include_url=False)
    )
