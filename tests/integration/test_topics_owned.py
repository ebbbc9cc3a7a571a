"""Flywheel owns its topics on a real broker: created as planned, checked, compressed.

Each test runs in a deployment of its own (a fresh topic prefix) on the
session's broker, which creates no topic on first use. The plan's topics are
created with 12 partitions, zstd and their retention; ensuring again creates
nothing; an existing topic with fewer partitions is reported naming topic,
setting, expected and found; an idempotent, compressed producer's events
round-trip; and a new consumer group reads a traffic topic from its look-back
(not from the start of retention) and a lifecycle topic from the earliest.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from flywheel.infra import Endpoints
from shared.errors import TopicMismatchError
from shared.events import DataArrived, DatasetRef, Event, PredictionLogged, Topic, topic_name
from shared.messaging import message_key, producer_options, subscribe
from shared.runtime import build_runtime
from shared.settings import BaseServiceSettings
from shared.topics import TopicPolicy, ensure_topics, plan_topics

pytestmark = pytest.mark.integration

POLICY = TopicPolicy()
HOUR_MS = 3600 * 1000


@pytest.fixture
async def admin(
    infra_env: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client, in a deployment of the test's own."""
    monkeypatch.setenv("FLYWHEEL_TOPIC_PREFIX", f"owned-{uuid.uuid4().hex[:8]}.")
    client = AIOKafkaAdminClient(**infra_env.kafka.client_options())
    await client.start()
    yield client
    await client.close()


async def _described(admin: AIOKafkaAdminClient, name: str) -> tuple[int, dict[str, str]]:
    """Partitions and configs of ``name`` (the broker learns of a new topic a moment later)."""
    async with asyncio.timeout(60):  # ~9 s for 48 partitions on a loaded 2-core machine
        (topic,) = await admin.describe_topics([name])
        while not topic["partitions"]:
            await asyncio.sleep(0.1)
            (topic,) = await admin.describe_topics([name])
    (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    ((_code, _message, _type, _name, entries),) = response.resources
    return len(topic["partitions"]), {entry[0]: entry[1] for entry in entries}


async def test_topics_are_created_as_planned_once(
    infra_env: Endpoints, admin: AIOKafkaAdminClient
) -> None:
    plan = plan_topics(POLICY, [Topic.PREDICTION_LOGGED, Topic.MODEL_APPROVED])
    first = await ensure_topics(infra_env.kafka, plan)
    assert sorted(first.created) == sorted(t.name for t in plan)
    partitions, config = await _described(admin, topic_name(Topic.PREDICTION_LOGGED))
    assert partitions == 12
    assert config["compression.type"] == "zstd"
    assert config["retention.ms"] == str(7 * 24 * HOUR_MS)
    assert (await _described(admin, topic_name(Topic.MODEL_APPROVED)))[1]["retention.ms"] == str(
        30 * 24 * HOUR_MS
    )
    again = await ensure_topics(infra_env.kafka, plan)
    assert (again.created, again.mismatches) == ([], [])
    assert again.partitions == {t.name: 12 for t in plan}


async def test_an_existing_topic_with_fewer_partitions_is_reported(
    infra_env: Endpoints, admin: AIOKafkaAdminClient
) -> None:
    name = topic_name(Topic.DATA_ARRIVED)
    await admin.create_topics([NewTopic(name, 3, 1)])
    plan = plan_topics(POLICY, [Topic.DATA_ARRIVED], dead_letters=[])
    with pytest.raises(TopicMismatchError) as refused:
        await ensure_topics(infra_env.kafka, plan)
    assert refused.value.mismatches == ((name, "partitions", "12", "3"),)
    warned = await ensure_topics(infra_env.kafka, plan, fewer_partitions="warn")
    assert [(m.setting, m.found, m.fatal) for m in warned.mismatches] == [
        ("partitions", "3", False),
        ("retention.ms", str(7 * 24 * HOUR_MS), False),  # the broker's default, not ours
        ("compression.type", "producer", False),
    ]


def _prediction(model: str) -> PredictionLogged:
    return PredictionLogged(
        producer="it",
        request_id=uuid.uuid4().hex,
        model_name=model,
        version="1",
        variant="champion",
        features={"x": 1.0},
        predicted_class="a",
        confidence=0.9,
        latency_ms=1.0,
    )


def _arrival(model: str) -> DataArrived:
    ref = DatasetRef(uri=f"file:///tmp/{model}.parquet", sha256="0" * 64, rows=1)
    return DataArrived(producer="it", model_name=model, dataset=ref)


async def _produce(infra: Endpoints, dated: list[tuple[Event, int]]) -> None:
    """Send each event with its timestamp, as the services' producers are configured
    (but with lz4, the other codec: the topics' own zstd is the services')."""
    options = producer_options("lz4")
    producer = AIOKafkaProducer(**infra.kafka.client_options(), **options)
    await producer.start()
    try:
        for event, timestamp_ms in dated:
            body = event.model_dump_json().encode()
            topic = topic_name(event.topic)
            await producer.send_and_wait(
                topic, body, key=message_key(event), timestamp_ms=timestamp_ms
            )
    finally:
        await producer.stop()


async def _read_all(infra: Endpoints, topic: str, count: int) -> list[bytes]:
    """The first ``count`` records of ``topic``, from every partition."""
    consumer = AIOKafkaConsumer(**infra.kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(POLICY.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while len(values) < count:
                batches = await consumer.getmany(timeout_ms=1000)
                values += [r.value or b"" for records in batches.values() for r in records]
        return values
    finally:
        await consumer.stop()


async def test_a_new_group_reads_traffic_from_its_look_back_and_lifecycle_from_the_start(
    infra_env: Endpoints, admin: AIOKafkaAdminClient
) -> None:
    await ensure_topics(
        infra_env.kafka, plan_topics(POLICY, [Topic.PREDICTION_LOGGED, Topic.DATA_ARRIVED])
    )
    now_ms = int(time.time() * 1000)
    # One model: one partition, the old prediction before the young one.
    old, young, arrival = _prediction("m"), _prediction("m"), _arrival("m")
    await _produce(infra_env, [(old, now_ms - 2 * HOUR_MS), (young, now_ms - 60_000)])
    await _produce(infra_env, [(arrival, now_ms - 2 * HOUR_MS)])
    retained = await _read_all(infra_env, topic_name(Topic.PREDICTION_LOGGED), 2)
    assert [PredictionLogged.model_validate_json(v).event_id for v in retained] == [
        old.event_id,
        young.event_id,
    ]

    runtime = build_runtime("topics-it", BaseServiceSettings())  # look-back: 1 h by default
    handled: list[str] = []
    both = asyncio.Event()

    async def record(event: Event) -> None:
        handled.append(event.event_id)
        if young.event_id in handled and arrival.event_id in handled:
            both.set()

    subscribe(runtime.consumer, Topic.PREDICTION_LOGGED, PredictionLogged, record)
    subscribe(runtime.consumer, Topic.DATA_ARRIVED, DataArrived, record)
    await runtime.broker.start()
    try:
        async with asyncio.timeout(45):
            await both.wait()
    finally:
        await runtime.broker.stop()
        await runtime.redis.aclose()
    # Read from the earliest, the old prediction would have come before the young one.
    assert old.event_id not in handled
