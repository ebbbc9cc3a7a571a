"""On the real broker, a co-partitioned consumer group puts partition p of every topic on
one replica, and each replica's ownership learns the partition count from the assignment.

Two replicas each run one consumer per topic (as each subscription of a service is a
consumer), in one group, over two topics of 12 partitions. A round-robin group spreads
one model's partitions of the two topics over both replicas; this one must not.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from flywheel.infra import Endpoints
from shared.ownership import PartitionOwnership, co_partitioned_assignor, model_partition

pytestmark = pytest.mark.integration

PARTITIONS = 12
REPLICAS = ("replica-a", "replica-b")
MODELS = [f"model-{i}" for i in range(40)]
JOIN_TIMEOUT_S = 60.0


@pytest.fixture
async def topics(infra: Endpoints) -> AsyncIterator[list[str]]:
    prefix = f"it-copart-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}.predictions", f"{prefix}.feedback"]
    admin = AIOKafkaAdminClient(**infra.kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])
        yield names
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def test_partition_p_of_both_topics_lands_on_one_replica(
    infra: Endpoints, topics: list[str]
) -> None:
    group = f"it-copart-{uuid.uuid4().hex[:8]}"
    ownerships: dict[str, PartitionOwnership] = {}
    consumers: dict[tuple[str, str], AIOKafkaConsumer] = {}
    try:
        for replica in REPLICAS:
            assignor = co_partitioned_assignor(replica)
            ownerships[replica] = PartitionOwnership(topics[0], assignor.partitions_of)
            for topic in topics:
                consumer = AIOKafkaConsumer(
                    **infra.kafka.client_options(),
                    group_id=group,
                    partition_assignment_strategy=(assignor, RoundRobinPartitionAssignor),
                    heartbeat_interval_ms=300,
                    enable_auto_commit=False,
                )
                listener = ownerships[replica].listener() if topic == topics[0] else None
                consumer.subscribe([topic], listener=listener)
                await consumer.start()
                consumers[replica, topic] = consumer
        owner = await _settled_owners(consumers)
        for partition in range(PARTITIONS):
            assert owner[topics[0], partition] == owner[topics[1], partition]
        assert {owner[topics[0], p] for p in range(PARTITIONS)} == set(REPLICAS)
        for replica, ownership in ownerships.items():
            mine = {p for p in range(PARTITIONS) if owner[topics[0], p] == replica}
            expected = {m for m in MODELS if model_partition(m, PARTITIONS) in mine}
            await _until(functools.partial(_owns_exactly, ownership, expected))
    finally:
        await asyncio.gather(*(c.stop() for c in consumers.values()))


def _owns_exactly(ownership: PartitionOwnership, models: set[str]) -> bool:
    return {m for m in MODELS if ownership.owns(m)} == models


async def _until(holds: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``holds`` (a listener runs just after the consumer took its assignment)."""
    deadline = time.monotonic() + timeout_s
    while not holds():
        assert time.monotonic() < deadline, "the ownership did not follow the assignment"
        await asyncio.sleep(0.05)


async def _settled_owners(
    consumers: dict[tuple[str, str], AIOKafkaConsumer],
) -> dict[tuple[str, int], str]:
    """Which replica holds each (topic, partition), once every partition is held once."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while time.monotonic() < deadline:
        owner: dict[tuple[str, int], str] = {}
        held = 0
        for (replica, _), consumer in consumers.items():
            for tp in consumer.assignment():
                owner[tp.topic, tp.partition] = replica
                held += 1
        every_member = all(consumer.assignment() for consumer in consumers.values())
        if every_member and held == len(owner) == 2 * PARTITIONS:
            return owner
        await asyncio.sleep(0.2)
    raise AssertionError(f"the group did not settle in {JOIN_TIMEOUT_S} s")
