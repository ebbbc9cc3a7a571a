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
        """Publish ``events`` as few batch requests: one per topic, type and partition, by size.

        A batch costs the client about a third of the CPU of one request per event.
        Each record keeps its model key, and goes in the batch of the partition that
        key hashes to, as a single ``publish`` of it would: one model's events stay
        in one partition, in order, whichever path published them. Grouping by
        partition, not by model, keeps a gateway serving 50 models at one request
        per partition (one per model cost it 12 times the CPU).
        """
        partitions = await self._partitions({topic_name(e.topic) for e in events})
        for group, records in batches_of(events, partitions):
            await self._broker.publish_batch(
                *(KafkaPublishMessage(body, key=key) for key, body in records),
                topic=group.topic,
                partition=group.partition,
                headers={"content-type": "application/json", "x-event-type": group.type_name},
            )
            self._metrics.published.labels(self._service, group.topic).inc(len(records))

    async def _partitions(self, topics: set[str]) -> dict[str, list[int]]:
        """Each topic's partitions, from the producer's metadata.

        A batch is sent to one partition and aiokafka picks a random one for it, so
        the keyed choice is made here. Empty on FastStream's in-memory test broker
        (no producer, no partitions): its batches name no partition.
        """
        # FastStream keeps the aiokafka producer behind its own wrapper; no public handle.
        producer = getattr(getattr(self._broker, "_producer", None), "_producer", None)
        client = getattr(producer, "producer", None)
        if not isinstance(client, AIOKafkaProducer):
            return {}
        return {topic: sorted(await client.partitions_for(topic)) for topic in topics}


class _Batch(NamedTuple):
    topic: str
    type_name: str
    partition: int | None


#: (key, encoded event) of one record.
Record = tuple[bytes, bytes]


def partition_of(key: bytes, partitions: list[int]) -> int | None:
    """The partition Kafka's default partitioner gives ``key`` (None: no partitions known).

    >>> partition_of(b"churn", [0, 1, 2, 3, 4, 5]), partition_of(b"churn", [])
    (5, None)
    """
    if not partitions:
        return None
    chosen: int = DefaultPartitioner()(key, partitions, partitions)
    return chosen


def batches_of(
    events: Sequence[Event], partitions: dict[str, list[int]] | None = None
) -> list[tuple[_Batch, list[Record]]]:
    """Keyed, encoded events grouped by (topic, type, partition) in order, each group cut
    at BATCH_BYTES; ``partitions`` are each topic's (none known: one group per topic, type)."""
    groups: dict[_Batch, list[list[Record]]] = {}
    sizes: dict[_Batch, int] = {}
    for event in events:
        topic, key = topic_name(event.topic), message_key(event)
        group = _Batch(
            topic, event.type_name(), partition_of(key, (partitions or {}).get(topic, []))
        )
        body = event.model_dump_json().encode()
        chunks = groups.setdefault(group, [[]])
        if chunks[-1] and sizes[group] + len(body) > BATCH_BYTES:
            chunks.append([])
            sizes[group] = 0
        chunks[-1].append((key, body))
        sizes[group] = sizes.get(group, 0) + len(body)
    return [(group, chunk) for group, chunks in groups.items() for chunk in chunks]
