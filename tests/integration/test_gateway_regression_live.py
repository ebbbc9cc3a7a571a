"""A regression model on the real Kafka, Redis and MLflow: registered with its spec, its
champion approved, it answers ``/v1/models/{name}/predict`` with a value, takes feedback
with the true value, and both events reach Kafka carrying the values.

The gateway runs as its own process against the session's infrastructure.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import mlflow
import mlflow.sklearn
import pandas as pd
import pytest
from _support import free_port
from aiokafka import AIOKafkaConsumer
from mlflow.tracking import MlflowClient
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline

from flywheel.infra import Endpoints
from flywheel.infra.stack import start_services, stop_services
from shared.datasets import generate_customers
from shared.events import Topic
from shared.kafka_security import KafkaConnection
from shared.mlflow_specs import MlflowSpecSource
from shared.spec import ModelSpec, load_spec
from shared.tabular import TabularEncoder
from shared.torch_mlp import TRUSTED_TYPES

pytestmark = pytest.mark.integration

SPEC = load_spec()


def _spend_spec(name: str) -> ModelSpec:
    """A customer's monthly spend from their other features: a regression spec."""
    return ModelSpec.model_validate(
        {
            "name": name,
            "label": "monthly_spend",
            "task": "regression",
            "features": [f.model_dump() for f in SPEC.features if f.name != "monthly_spend"],
        }
    )


def _register_regressor(infra: Endpoints, spec: ModelSpec) -> Pipeline:
    """Flywheel's pipeline shape for ``spec``, logged as the trainer logs it, registered with
    its spec and made champion (what an approval does). Returns the pipeline."""
    frame = generate_customers(400, seed=12)
    encoder = TabularEncoder(spec.numeric_features, spec.categorical_features)
    pipeline = Pipeline([("features", encoder), ("regressor", Ridge())])
    pipeline.fit(frame[list(spec.feature_names)], frame[spec.label])
    MlflowSpecSource(infra.mlflow_uri).register(spec.name, spec, "it")
    mlflow.set_tracking_uri(infra.mlflow_uri)
    mlflow.set_experiment(spec.name)
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(
            pipeline,
            name="model",
            pip_requirements=["scikit-learn"],
            skops_trusted_types=TRUSTED_TYPES,
        )
        mlflow.log_metrics({"rmse": 10.0, "mae": 8.0, "r2": 0.5})
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", spec.name).version
    MlflowClient(infra.mlflow_uri).set_registered_model_alias(spec.name, "champion", version)
    return pipeline


@pytest.fixture
def gateway(infra: Endpoints) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        # A default model of the test's own, so the regressor is reached by its own route.
        patch.setenv("FLYWHEEL_MODEL_NAME", f"gw-default-{uuid.uuid4().hex[:8]}")
        try:
            urls = start_services(infra, {"gateway": free_port()}, ["gateway"], timeout=120)
            yield urls["gateway"]
        finally:
            stop_services(infra.run_dir, ["gateway"])


def _rows(spec: ModelSpec, n: int) -> list[dict[str, Any]]:
    frame = generate_customers(n, seed=6)[list(spec.feature_names)]
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


def _predict_when_loaded(client: httpx.Client, name: str, row: dict[str, Any]) -> Any:
    deadline = time.monotonic() + 120
    while True:
        answer = client.post(f"/v1/models/{name}/predict", json={"features": row})
        if answer.status_code != 503:
            assert answer.status_code == 200, answer.text
            return answer.json()
        assert time.monotonic() < deadline, f"the gateway never loaded {name}: {answer.text}"
        time.sleep(0.5)


async def _events_of(
    kafka: KafkaConnection, topic: Topic, request_id: str, timeout_s: float
) -> dict[str, Any]:
    """The first event on ``topic`` about ``request_id`` (empty if none came in time)."""
    consumer = AIOKafkaConsumer(
        topic.value,
        **kafka.client_options(),
        group_id=f"gw-regression-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for record in records:
                        event = json.loads(record.value or b"{}")
                        if event.get("request_id") == request_id:
                            return dict(event)
    except TimeoutError:
        return {}
    finally:
        await consumer.stop()


def test_a_regression_champion_answers_a_value_and_takes_its_true_value(
    infra: Endpoints, gateway: str
) -> None:
    spec = _spend_spec(f"spend-{uuid.uuid4().hex[:8]}")
    pipeline = _register_regressor(infra, spec)
    row = _rows(spec, 1)[0]
    expected = float(pipeline.predict(pd.DataFrame([row])[list(spec.feature_names)])[0])
    with httpx.Client(base_url=gateway, timeout=30) as client:
        answer = _predict_when_loaded(client, spec.name, row)
        assert (answer["model_name"], answer["model_version"]) == (spec.name, "1")
        predicted = answer["predictions"][0]
        assert set(predicted) == {"request_id", "value"}
        assert predicted["value"] == pytest.approx(expected, rel=1e-5)
        request_id = answer["request_id"]
        feedback = _feedback_when_recorded(client, spec.name, request_id, 57.25)
        assert feedback == {"request_id": request_id, "duplicate": False, "correct": None}
    logged = asyncio.run(_events_of(infra.kafka, Topic.PREDICTION_LOGGED, request_id, 60))
    received = asyncio.run(_events_of(infra.kafka, Topic.FEEDBACK_RECEIVED, request_id, 60))
    assert logged["model_name"] == spec.name
    assert logged["predicted_value"] == pytest.approx(predicted["value"])
    assert logged["predicted_class"] is None
    assert received["predicted_value"] == pytest.approx(predicted["value"])
    assert (received["true_value"], received["version"], received["correct"]) == (57.25, "1", None)


def _feedback_when_recorded(
    client: httpx.Client, name: str, request_id: str, true_value: float
) -> Any:
    """Send the true value; retried while the prediction's record is still on its way."""
    body = {"request_id": request_id, "true_value": true_value}
    deadline = time.monotonic() + 30
    while True:
        answer = client.post(f"/v1/models/{name}/feedback", json=body)
        if answer.status_code not in (404, 503) or time.monotonic() > deadline:
            assert answer.status_code == 200, answer.text
            return answer.json()
        time.sleep(0.5)
