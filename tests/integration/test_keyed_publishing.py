"""One model's events stay in one partition, whichever way they were published.

On the session's real broker, a deployment of its own (a fresh topic prefix)
gets a ``data-arrived`` topic of 6 partitions. A service publisher sends events
of three models one by one and in batches; every record carries its model as
key, and each model's records, single or batched, sit in one partition, the
one Kafka's default partitioner gives that key, in publication order. Before
the fix, batches carried no key and went to a random partition.
"""

from __future__ import annotations

import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from flywheel.infra import Endpoints
from shared.events import DataArrived, DatasetRef, Topic, topic_name
from shared.runtime import build_runtime
from shared.settings import BaseServiceSettings

pytestmark = pytest.mark.integration

PARTITIONS = 6
MODELS = ("churn", "fraud", "segment")


def _arrival(model: str, i: int) -> DataArrived:
    ref = DatasetRef(uri=f"file:///tmp/{model}-{i}.parquet", sha256="0" * 64, rows=i)
    return DataArrived(producer="it", model_name=model, dataset=ref)


async def _create(infra: Endpoints, topic: str) -> None:
    admin = AIOKafkaAdminClient(**infra.kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


async def _records(infra: Endpoints, topic: str) -> dict[int, list[tuple[bytes, bytes]]]:
    consumer = AIOKafkaConsumer(**infra.kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        while sum(len(v) for v in found.values()) < sum(ends.values()):
            batch = await consumer.getmany(timeout_ms=2000)
            for tp, records in batch.items():
                found[tp.partition] += [(r.key or b"", r.value or b"") for r in records]
        return found
    finally:
        await consumer.stop()


async def test_each_models_events_share_the_partition_its_key_hashes_to(
    infra_env: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_TOPIC_PREFIX", f"it-{uuid.uuid4().hex[:8]}.")
    topic = topic_name(Topic.DATA_ARRIVED)
    await _create(infra_env, topic)
    runtime = build_runtime("keyed", BaseServiceSettings())
    await runtime.broker.start()
    try:
        sent = [_arrival(m, i) for i in range(4) for m in MODELS]
        await runtime.publisher.publish(sent[0])
        await runtime.publisher.publish_batch(sent[1:9])
        for event in sent[9:]:
            await runtime.publisher.publish(event)
    finally:
        await runtime.broker.stop()
        await runtime.redis.aclose()
    found = await _records(infra_env, topic)
    everything = sorted(range(PARTITIONS))
    for model in MODELS:
        key = model.encode()
        homes = {p for p, records in found.items() for k, _ in records if k == key}
        assert homes == {DefaultPartitioner()(key, everything, everything)}, model
        (home,) = homes
        received = [DataArrived.model_validate_json(v) for k, v in found[home] if k == key]
        assert [e.event_id for e in received] == [e.event_id for e in sent if e.model_name == model]
    assert len({p for p in found if found[p]}) > 1  # positive control: models spread out
