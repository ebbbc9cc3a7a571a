"""Batch consumption through FastStream's in-memory broker: dedup, dead letters, the bad apple."""

from __future__ import annotations

from collections.abc import Sequence

from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from shared.errors import InvalidInputError
from shared.events import DataArrived, DatasetRef, Topic, dead_letter_topic
from shared.messaging.batch import subscribe_batch
from shared.testing import InMemoryProcessedEvents, consumer_context


def _event(rows: int = 10) -> DataArrived:
    ref = DatasetRef(uri="file:///tmp/x.parquet", sha256="0" * 64, rows=rows)
    return DataArrived(producer="test", dataset=ref)


def _parked(broker: KafkaBroker) -> list[tuple[bytes, dict[str, str]]]:
    parked: list[tuple[bytes, dict[str, str]]] = []

    @broker.subscriber(dead_letter_topic(Topic.DATA_ARRIVED))
    async def dlq(message: KafkaMessage) -> None:
        parked.append((message.body, dict(message.headers)))

    return parked


async def test_a_batch_is_handled_once_with_invalid_records_dead_lettered_alone() -> None:
    broker = KafkaBroker()
    ctx = consumer_context("svc", broker)
    parked = _parked(broker)
    batches: list[list[str]] = []

    async def handle(events: Sequence[DataArrived]) -> None:
        batches.append([e.event_id for e in events])

    subscribe_batch(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    first, second = _event(), _event()
    good = [first.model_dump_json().encode(), second.model_dump_json().encode()]
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            good[0], b"{not json", good[1], topic=Topic.DATA_ARRIVED.value
        )
        # A redelivery of the same records after a crash: nothing is handled twice.
        await test_broker.publish_batch(*good, topic=Topic.DATA_ARRIVED.value)
    assert batches == [[first.event_id, second.event_id]]
    assert [(body, headers["x-error-reason"]) for body, headers in parked] == [
        (b"{not json", "invalid")
    ]
    consumed = ctx.metrics.consumed.labels("svc", Topic.DATA_ARRIVED.value, "duplicate")
    assert consumed._value.get() == 2


async def test_when_a_batch_keeps_failing_only_the_event_at_fault_is_dead_lettered() -> None:
    broker = KafkaBroker()
    ctx = consumer_context("svc", broker)
    parked = _parked(broker)
    handled: list[int] = []

    async def handle(events: Sequence[DataArrived]) -> None:
        if any(e.dataset.rows == 13 for e in events):
            raise InvalidInputError("13 rows is unlucky")
        handled.extend(e.dataset.rows for e in events)

    subscribe_batch(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    events = [_event(10), _event(13), _event(12)]
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            *(e.model_dump_json().encode() for e in events), topic=Topic.DATA_ARRIVED.value
        )
    assert handled == [10, 12]
    assert len(parked) == 1
    assert parked[0][1]["x-error-reason"] == "rejected"
    processed = ctx.processed
    assert isinstance(processed, InMemoryProcessedEvents)
    assert processed.ids == {e.event_id for e in events}
