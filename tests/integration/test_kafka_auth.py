"""Only services write control events: the local broker refuses strangers and wrong principals.

The broker here is this module's own, started the way ``flywheel up`` starts it
(SASL/SCRAM, ACLs from the publish/consume table), so the test holds whatever
Kafka the rest of the session uses.
"""

from __future__ import annotations

import asyncio
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
from _support import free_port
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from flywheel.infra import Endpoints, InfraConfig
from flywheel.infra.kafka import kafka_credentials, start_kafka
from flywheel.infra.kafka_auth import CREDENTIALS_FILE
from flywheel.infra.processes import stop
from shared.events import Topic
from shared.kafka_security import KafkaConnection

pytestmark = pytest.mark.integration

CONTROL = Topic.EXPERIMENT_UPDATED.value


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """A broker of this module's own, with authentication as the local stack has it."""
    config = InfraConfig(
        run_dir=tmp_path_factory.mktemp("kafka-auth"),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
    )
    start_kafka(config)
    try:
        yield config.endpoints(kafka_credentials(config))
    finally:
        stop(config.run_dir, "kafka")


@pytest.fixture
async def producers(secured: Endpoints) -> AsyncIterator[list[AIOKafkaProducer]]:
    """Producers made by the test, stopped at its end."""
    producers: list[AIOKafkaProducer] = []
    yield producers
    for producer in producers:
        await producer.stop()


async def _send(producers: list[AIOKafkaProducer], kafka: KafkaConnection, value: bytes) -> None:
    producer = AIOKafkaProducer(**kafka.client_options(), request_timeout_ms=10000)
    producers.append(producer)
    await producer.start()
    await asyncio.wait_for(producer.send_and_wait(CONTROL, value), timeout=30)


async def _read_back(kafka: KafkaConnection, value: bytes) -> bool:
    consumer = AIOKafkaConsumer(
        CONTROL,
        **kafka.client_options(),
        group_id=f"flywheel-admin-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    try:
        await consumer.start()
        async with asyncio.timeout(30):
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                if any(r.value == value for records in batches.values() for r in records):
                    return True
    finally:
        await consumer.stop()


async def test_the_router_may_publish_experiment_updated(
    secured: Endpoints, producers: list[AIOKafkaProducer]
) -> None:
    value = uuid.uuid4().bytes
    await _send(producers, secured.kafka_for("router"), value)
    assert await _read_back(secured.kafka, value)


async def test_the_gateway_may_not_publish_experiment_updated(
    secured: Endpoints, producers: list[AIOKafkaProducer]
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await _send(producers, secured.kafka_for("gateway"), b"forged")


async def test_an_unauthenticated_producer_is_refused(
    secured: Endpoints, producers: list[AIOKafkaProducer]
) -> None:
    with pytest.raises(KafkaConnectionError):
        await _send(producers, KafkaConnection(secured.kafka_bootstrap), b"forged")


async def test_a_wrong_password_is_refused(
    secured: Endpoints, producers: list[AIOKafkaProducer]
) -> None:
    router = secured.kafka_for("router")
    wrong = replace(router, security=replace(router.security, password="guessed"))
    with pytest.raises(KafkaConnectionError):
        await _send(producers, wrong, b"forged")


async def test_a_service_reads_only_what_it_consumes_in_its_own_groups(
    secured: Endpoints,
) -> None:
    async def first_fetch(principal: str, topic: str, group: str) -> None:
        kafka = secured.kafka_for(principal)
        consumer = AIOKafkaConsumer(topic, **kafka.client_options(), group_id=group)
        try:
            await consumer.start()
            await consumer.getmany(timeout_ms=3000)
        finally:
            await consumer.stop()

    await first_fetch("gateway", CONTROL, f"flywheel-gateway-{uuid.uuid4().hex[:8]}")
    with pytest.raises(TopicAuthorizationFailedError):
        await first_fetch("trainer", CONTROL, f"flywheel-trainer-{uuid.uuid4().hex[:8]}")
    with pytest.raises(GroupAuthorizationFailedError):
        await first_fetch("gateway", CONTROL, f"flywheel-router-{uuid.uuid4().hex[:8]}")


def test_the_credentials_are_readable_by_their_owner_only(secured: Endpoints) -> None:
    mode = (secured.run_dir / "kafka" / CREDENTIALS_FILE).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
