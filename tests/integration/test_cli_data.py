"""`flywheel data generate` and `flywheel data push` against a real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.infra import Endpoints
from shared.datasets import generate_customers, sha256_of
from shared.events import DataArrived, Topic
from shared.kafka_security import KafkaConnection

pytestmark = pytest.mark.integration


async def _data_arrived_after(kafka: KafkaConnection, offset: int, event_id: str) -> DataArrived:
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(Topic.DATA_ARRIVED.value, 0)
        consumer.assign([partition])
        consumer.seek(partition, offset)
        async with asyncio.timeout(30):
            async for record in consumer:
                event = DataArrived.model_validate_json(record.value or b"")
                if event.event_id == event_id:
                    return event
    finally:
        await consumer.stop()
    raise AssertionError("unreachable")


async def _end_offset(kafka: KafkaConnection) -> int:
    consumer = AIOKafkaConsumer(**kafka.client_options())
    await consumer.start()
    try:
        partition = TopicPartition(Topic.DATA_ARRIVED.value, 0)
        return int((await consumer.end_offsets([partition]))[partition])
    finally:
        await consumer.stop()


def test_generate_then_push_announces_the_file_by_reference(
    infra_env: Endpoints, tmp_path: Path
) -> None:
    batch = tmp_path / "batch.parquet"
    runner = CliRunner()
    generated = runner.invoke(
        app, ["data", "generate", str(batch), "--rows", "300", "--drift", "1"]
    )
    assert generated.exit_code == 0, generated.output
    start = asyncio.run(_end_offset(infra_env.kafka))
    pushed = runner.invoke(app, ["data", "push", str(batch)])
    assert pushed.exit_code == 0, pushed.output
    event_id = pushed.output.split()[1]
    event = asyncio.run(_data_arrived_after(infra_env.kafka, start, event_id))
    assert event.dataset.uri == batch.resolve().as_uri()
    assert event.dataset.sha256 == sha256_of(batch)
    assert event.dataset.rows == 300


def test_push_refuses_a_file_that_does_not_fit_the_spec(
    infra_env: Endpoints, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    generate_customers(20, 1).drop(columns=["monthly_spend"]).to_csv(bad, index=False)
    result = CliRunner().invoke(app, ["data", "push", str(bad)])
    assert result.exit_code == 1
    assert "monthly_spend" in result.output
