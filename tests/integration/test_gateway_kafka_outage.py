"""Predictions answered while Kafka is down reach Kafka after it returns: none is lost.

The gateway runs as its own process against a broker of this test's own
(stopped and restarted here), the session's Redis and MLflow.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from _support import free_port, register_champion
from aiokafka import AIOKafkaConsumer

from flywheel.infra import Endpoints, InfraConfig
from flywheel.infra.kafka import kafka_credentials, start_kafka
from flywheel.infra.processes import stop
from flywheel.infra.stack import start_services, stop_services
from shared.datasets import generate_customers
from shared.events import Topic
from shared.kafka_security import KafkaConnection
from shared.spec import load_spec

pytestmark = pytest.mark.integration

SPEC = load_spec()


@pytest.fixture
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfraConfig]:
    config = InfraConfig(
        run_dir=tmp_path_factory.mktemp("outage"),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
    )
    start_kafka(config)
    try:
        yield config
    finally:
        stop(config.run_dir, "kafka")


@pytest.fixture
def gateway(infra: Endpoints, own_kafka: InfraConfig) -> Iterator[str]:
    name = f"outage-{uuid.uuid4().hex[:8]}"
    register_champion(infra, name)
    endpoints = Endpoints(
        own_kafka.kafka_bootstrap,
        infra.redis_url,
        infra.mlflow_uri,
        own_kafka.run_dir,
        kafka_credentials(own_kafka),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLYWHEEL_MODEL_NAME", name)
        patch.setenv("GATEWAY_PUBLISH_TIMEOUT_S", "2")
        try:
            urls = start_services(endpoints, {"gateway": free_port()}, ["gateway"], timeout=120)
            yield urls["gateway"]
        finally:
            stop_services(own_kafka.run_dir, ["gateway"])


def _rows(n: int) -> list[dict[str, object]]:
    frame = generate_customers(n, seed=5)[list(SPEC.feature_names)]
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


def _predict(client: httpx.Client, row: dict[str, object]) -> str:
    response = client.post("/v1/predict", json={"features": row})
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def _wait_for_model(client: httpx.Client, row: dict[str, object]) -> None:
    deadline = time.monotonic() + 120
    while client.post("/v1/predict", json={"features": row}).status_code == 503:
        assert time.monotonic() < deadline, "the gateway never loaded its champion"
        time.sleep(0.5)


def _metric(client: httpx.Client, name: str, labels: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


async def _logged_request_ids(
    kafka: KafkaConnection, wanted: set[str], timeout_s: float
) -> set[str]:
    consumer = AIOKafkaConsumer(
        Topic.PREDICTION_LOGGED.value,
        **kafka.client_options(),
        group_id=f"outage-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen: set[str] = set()
    try:
        async with asyncio.timeout(timeout_s):
            while not wanted <= seen:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    seen |= {json.loads(r.value)["request_id"] for r in records if r.value}
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return seen


def test_predictions_during_a_kafka_outage_are_published_when_it_returns(
    gateway: str, own_kafka: InfraConfig
) -> None:
    rows = _rows(30)
    with httpx.Client(base_url=gateway, timeout=10) as client:
        _wait_for_model(client, rows[0])
        before = {_predict(client, row) for row in rows[:5]}
        stop(own_kafka.run_dir, "kafka")
        started = time.monotonic()
        during = {_predict(client, row) for row in rows[5:]}
        # Every request was answered at once while the broker was away.
        assert time.monotonic() - started < 20
        deadline = time.monotonic() + 30
        while _metric(client, "prediction_events_retried_total", 'stage="publish"') == 0:
            assert time.monotonic() < deadline, "the gateway never tried to publish"
            time.sleep(0.5)
        start_kafka(own_kafka)
        operator = own_kafka.endpoints(kafka_credentials(own_kafka)).kafka
        seen = asyncio.run(_logged_request_ids(operator, before | during, 120))
        assert not (before | during) - seen, "predictions whose events never reached Kafka"
        dropped = _metric(client, "prediction_events_dropped_total", 'reason="publish_buffer_full"')
        assert dropped == 0
