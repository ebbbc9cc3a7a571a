"""Consumption semantics through FastStream's in-memory broker: dedup, retries, dead letters."""

from __future__ import annotations

import json

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from shared import messaging
from shared.errors import InvalidInputError
from shared.events import DataArrived, DatasetRef, Topic, dead_letter_topic
from shared.messaging import KafkaEventPublisher, subscribe, subscribe_broadcast
from shared.testing import consumer_context


def _data_arrived() -> DataArrived:
    ref = DatasetRef(uri="file:///tmp/x.parquet", sha256="0" * 64, rows=10)
    return DataArrived(producer="test", dataset=ref)


async def test_handled_once_even_when_delivered_twice() -> None:
    broker = KafkaBroker()
    ctx = consumer_context("svc", broker)
    seen: list[str] = []

    async def handle(event: DataArrived) -> None:
        seen.append(event.event_id)

    subscribe(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    event = _data_arrived()
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(event.model_dump_json().encode(), Topic.DATA_ARRIVED.value)
        await test_broker.publish(event.model_dump_json().encode(), Topic.DATA_ARRIVED.value)
    assert seen == [event.event_id]


async def test_invalid_event_is_dead_lettered_with_reason_and_original_bytes() -> None:
    broker = KafkaBroker()
    ctx = consumer_context("svc", broker)
    parked: list[tuple[bytes, dict[str, str]]] = []

    @broker.subscriber(dead_letter_topic(Topic.DATA_ARRIVED))
    async def dlq(message: KafkaMessage) -> None:
        parked.append((message.body, dict(message.headers)))

    async def handle(event: DataArrived) -> None:
        raise AssertionError("must not be called")

    subscribe(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    bad = json.dumps({"type": "data-arrived", "producer": "x", "dataset": {"uri": 3}}).encode()
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(bad, Topic.DATA_ARRIVED.value)
    assert len(parked) == 1
    body, headers = parked[0]
    assert body == bad
    assert headers["x-error-reason"] == "invalid"
    assert "dataset.uri" in headers["x-error"]
    assert (
        ctx.metrics.dead_letters.labels("svc", Topic.DATA_ARRIVED.value, "invalid")._value.get()
        == 1
    )


@pytest.mark.parametrize(
    ("error", "expected_calls"),
    [(RuntimeError("flaky"), 3), (InvalidInputError("bad file"), 1)],
)
async def test_failing_handler_retries_a_bounded_number_of_times_then_dead_letters(
    error: Exception, expected_calls: int
) -> None:
    broker = KafkaBroker()
    ctx = consumer_context("svc", broker)
    calls = 0
    parked: list[str] = []

    @broker.subscriber(dead_letter_topic(Topic.DATA_ARRIVED))
    async def dlq(message: KafkaMessage) -> None:
        parked.append("x")

    async def handle(event: DataArrived) -> None:
        nonlocal calls
        calls += 1
        raise error

    subscribe(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    event = _data_arrived()
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(event.model_dump_json().encode(), Topic.DATA_ARRIVED.value)
    assert calls == expected_calls
    assert parked == ["x"]
    # Dead-lettered events count as processed: a redelivery is not retried again.
    assert await ctx.processed.seen(event.event_id)


async def test_broadcast_subscriptions_use_a_group_per_replica_and_no_shared_marker() -> None:
    broker = KafkaBroker()
    ctx = consumer_context("gw", broker)
    seen: list[str] = []

    async def handle(event: DataArrived) -> None:
        seen.append(event.event_id)

    subscribe_broadcast(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    subscribe_broadcast(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    groups = {sub.group_id for sub in broker.subscribers}  # type: ignore[attr-defined]
    assert len(groups) == 2
    assert all(g.startswith("flywheel-gw-") for g in groups)
    event = _data_arrived()
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(event.model_dump_json().encode(), Topic.DATA_ARRIVED.value)
    assert seen == [event.event_id, event.event_id]
    assert not await ctx.processed.seen(event.event_id)


async def test_a_published_batch_reaches_subscribers_event_by_event() -> None:
    broker = KafkaBroker()
    ctx = consumer_context("svc", broker)
    publisher = KafkaEventPublisher(broker, "gateway", ctx.metrics)
    seen: list[tuple[str, str]] = []

    async def handle(event: DataArrived) -> None:
        seen.append((event.event_id, event.dataset.uri))

    subscribe(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    events = [_data_arrived() for _ in range(5)]
    async with TestKafkaBroker(broker):
        await publisher.publish_batch(events)
    assert seen == [(e.event_id, e.dataset.uri) for e in events]
    published = ctx.metrics.published.labels("gateway", Topic.DATA_ARRIVED.value)
    assert published._value.get() == 5


def test_batches_are_grouped_by_topic_and_cut_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    events = [_data_arrived() for _ in range(5)]
    size = len(events[0].model_dump_json().encode())
    monkeypatch.setattr(messaging, "BATCH_BYTES", 2 * size)
    batches = messaging._batches(events)
    assert [len(bodies) for _, bodies in batches] == [2, 2, 1]
    assert {key for key, _ in batches} == {(Topic.DATA_ARRIVED.value, "data-arrived")}
    assert [b for _, bodies in batches for b in bodies] == [
        e.model_dump_json().encode() for e in events
    ]
