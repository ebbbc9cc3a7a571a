"""The infrastructure the services rely on really works: Kafka, Redis and MLflow round trips."""

from __future__ import annotations

import asyncio
import os
import uuid

import httpx
import mlflow
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from flywheel.infra import Endpoints
from shared.settings import BaseServiceSettings

pytestmark = pytest.mark.integration


async def test_kafka_delivers_a_produced_message(infra: Endpoints) -> None:
    topic, payload = f"test-infra-{uuid.uuid4().hex}", uuid.uuid4().bytes
    producer = AIOKafkaProducer(**infra.kafka.client_options())
    await producer.start()
    try:
        await producer.send_and_wait(topic, payload)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        **infra.kafka.client_options(),
        group_id=f"test-infra-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert record.value == payload


def test_redis_returns_what_was_set(infra: Endpoints) -> None:
    client = redis.Redis.from_url(infra.redis_url)
    key, value = f"test-infra:{uuid.uuid4().hex}", uuid.uuid4().hex.encode()
    try:
        assert client.set(key, value, ex=60)
        assert client.get(key) == value
    finally:
        client.delete(key)
        client.close()


def test_mlflow_answers_health(infra: Endpoints) -> None:
    response = httpx.get(f"{infra.mlflow_uri}/health", timeout=10)
    assert response.status_code == 200


def test_mlflow_creates_an_experiment(infra: Endpoints) -> None:
    client = mlflow.MlflowClient(tracking_uri=infra.mlflow_uri)
    name = f"test-infra-{uuid.uuid4().hex}"
    experiment_id = client.create_experiment(name)
    assert client.get_experiment(experiment_id).name == name
    found = client.get_experiment_by_name(name)
    assert found is not None
    assert found.experiment_id == experiment_id


def test_infra_env_exports_the_endpoints(infra_env: Endpoints) -> None:
    assert os.environ["KAFKA_BOOTSTRAP_SERVERS"] == infra_env.kafka_bootstrap
    assert os.environ["REDIS_URL"] == infra_env.redis_url
    assert os.environ["MLFLOW_TRACKING_URI"] == infra_env.mlflow_uri


def test_infra_env_exports_how_to_authenticate(infra_env: Endpoints) -> None:
    # Read back as settings, the environment reaches the broker as the test infra's operator.
    assert BaseServiceSettings().kafka_connection() == infra_env.kafka
