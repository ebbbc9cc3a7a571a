"""Publishing events on their topics, keyed by model name, one at a time or in batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaBroker, KafkaPublishMessage

from shared.events import Event, topic_name
from shared.metrics import MessagingMetrics


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
        for group, bodies in batches_of(events):
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


def batches_of(events: Sequence[Event]) -> list[tuple[_Batch, list[bytes]]]:
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
