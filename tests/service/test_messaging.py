"""Consumption semantics through FastStream's in-memory broker: dedup, retries, dead letters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import httpx
import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from shared.errors import InvalidInputError
from shared.events import DataArrived, DatasetRef, Topic, dead_letter_topic
from shared.messaging import (
    DEAD_LETTER_STREAK,
    ConsumerContext,
    KafkaEventPublisher,
    publisher,
    subscribe,
    subscribe_broadcast,
)
from shared.messaging.batch import subscribe_batch
from shared.runtime import build_runtime, service_app
from shared.settings import BaseServiceSettings
from shared.testing import consumer_context


def _data_arrived(model_name: str | None = None) -> DataArrived:
    ref = DatasetRef(uri="file:///tmp/x.parquet", sha256="0" * 64, rows=10)
    return DataArrived(producer="test", dataset=ref, model_name=model_name)


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


def test_batches_are_grouped_by_topic_and_partition_and_cut_by_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    churn, fraud = [_data_arrived("churn") for _ in range(5)], [_data_arrived("fraud")]
    events = [*churn[:3], *fraud, *churn[3:]]
    size = len(churn[0].model_dump_json().encode())
    monkeypatch.setattr(publisher, "BATCH_BYTES", 2 * size)
    # Six partitions: churn hashes to 5, fraud to 4; each record keeps its own key.
    batches = publisher.batches_of(events, {Topic.DATA_ARRIVED.value: list(range(6))})
    assert [(group.partition, [k for k, _ in records]) for group, records in batches] == [
        (5, [b"churn", b"churn"]),
        (5, [b"churn", b"churn"]),
        (5, [b"churn"]),
        (4, [b"fraud"]),
    ]
    assert {(g.topic, g.type_name) for g, _ in batches} == {
        (Topic.DATA_ARRIVED.value, "data-arrived")
    }
    churn_bodies = [b for group, records in batches if group.partition == 5 for _, b in records]
    assert churn_bodies == [e.model_dump_json().encode() for e in churn]  # in order
    # One partition: every model's records in one batch, keys kept.
    monkeypatch.setattr(publisher, "BATCH_BYTES", 10 * size)
    (together,) = publisher.batches_of(events[:3] + fraud, {Topic.DATA_ARRIVED.value: [0]})
    assert [k for k, _ in together[1]] == [b"churn", b"churn", b"churn", b"fraud"]


async def test_a_dead_letter_carries_the_event_s_correlation_id() -> None:
    broker = KafkaBroker()
    ctx = consumer_context("svc", broker)
    parked: list[tuple[str, bytes | None]] = []

    @broker.subscriber(dead_letter_topic(Topic.DATA_ARRIVED))
    async def dlq(message: KafkaMessage) -> None:
        parked.append((message.correlation_id, message.raw_message.key))  # type: ignore[union-attr]

    async def handle(event: DataArrived) -> None:
        raise InvalidInputError("bad file")

    subscribe(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    event = _data_arrived()
    # An invalid event still names its correlation id when its envelope has one.
    invalid = json.dumps({"type": "data-arrived", "correlation_id": "c-1", "dataset": 3})
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(event.model_dump_json().encode(), Topic.DATA_ARRIVED.value)
        await test_broker.publish(invalid.encode(), Topic.DATA_ARRIVED.value)
    assert parked == [
        (event.correlation_id, event.correlation_id.encode()),
        ("c-1", b"c-1"),
    ]


def _ready(ctx: ConsumerContext) -> list[str]:
    """The dead-letter problems (the in-memory broker never runs a rebalance listener)."""
    return [p for p in ctx.health.problems() if not p.startswith("waiting for")]


async def test_readiness_fails_while_a_subscription_dead_letters_everything_it_reads() -> None:
    broker = KafkaBroker()
    ctx = consumer_context("svc", broker)
    broken = True

    async def handle(event: DataArrived) -> None:
        if broken:
            raise ValueError("saved rows (1879) do not fill the window (902)")

    subscribe(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    async with TestKafkaBroker(broker) as test_broker:

        async def send(count: int) -> None:
            for _ in range(count):
                body = _data_arrived().model_dump_json().encode()
                await test_broker.publish(body, Topic.DATA_ARRIVED.value)

        await send(DEAD_LETTER_STREAK - 1)
        assert _ready(ctx) == []  # a run of failures shorter than the streak: still ready
        await send(1)
        assert _ready(ctx) == [
            f"dead-lettering every event on {Topic.DATA_ARRIVED.value}: "
            "failed: ValueError: saved rows (1879) do not fill the window (902)"
        ]
        broken = False
        await send(1)
        assert _ready(ctx) == []


async def test_readiness_fails_when_every_batch_event_is_dead_lettered() -> None:
    broker = KafkaBroker()
    ctx = consumer_context("svc", broker)

    async def handle(events: Sequence[DataArrived]) -> None:
        raise InvalidInputError("no")

    subscribe_batch(ctx, Topic.DATA_ARRIVED, DataArrived, handle)
    bodies = [_data_arrived().model_dump_json().encode() for _ in range(25)]
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(*bodies, topic=Topic.DATA_ARRIVED.value)
    assert [p.split(":")[0] for p in _ready(ctx)] == [
        f"dead-lettering every event on {Topic.DATA_ARRIVED.value}"
    ]


async def test_a_subscription_is_ready_once_its_consumer_group_assigned_it() -> None:
    ctx = consumer_context("svc")
    listener = ctx.health.listener(Topic.DATA_ARRIVED.value)
    waiting = ctx.health.problems()
    await listener.on_partitions_assigned(set())  # more replicas than partitions: still joined
    assert waiting == [f"waiting for the consumer group to assign {Topic.DATA_ARRIVED.value}"]
    assert ctx.health.problems() == []


async def test_state_is_re_read_once_when_every_subscription_first_joined() -> None:
    ctx = consumer_context("svc")
    first = ctx.health.listener(Topic.DATA_ARRIVED.value)
    second = ctx.health.listener(Topic.MODEL_PROMOTED.value)
    re_reads: list[str] = []

    async def re_read() -> None:
        re_reads.append("state")

    ctx.health.when_all_assigned(re_read)
    await first.on_partitions_assigned(set())
    await asyncio.sleep(0)
    before_all = list(re_reads)
    await second.on_partitions_assigned(set())
    await first.on_partitions_assigned(set())  # a later rebalance: nothing to catch up
    for _ in range(3):
        await asyncio.sleep(0)
    assert before_all == []
    assert re_reads == ["state"]


async def test_readyz_says_not_ready_and_why() -> None:
    runtime = build_runtime("svc", BaseServiceSettings())
    runtime.broker_started.set()
    app = service_app(runtime, checks={"broker": _always, "redis": _always})
    for _ in range(DEAD_LETTER_STREAK):
        runtime.consumer.health.dead_lettered(Topic.DATA_ARRIVED.value, "invalid: x: bad")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        failing = await client.get("/readyz")
        runtime.consumer.health.handled(Topic.DATA_ARRIVED.value)
        recovered = await client.get("/readyz")
    assert failing.status_code == 503
    assert failing.json()["checks"]["consuming"] is False
    assert failing.json()["reasons"] == [
        f"dead-lettering every event on {Topic.DATA_ARRIVED.value}: invalid: x: bad"
    ]
    assert recovered.status_code == 200
    assert recovered.json()["reasons"] == []


async def _always() -> bool:
    return True
