"""The monitor and any model through real Kafka, Redis and MLflow: a champion logged without
a reference sample, or with a corrupt one, dead-letters nothing and is reported; a
regressor's rising loss is a concept drift."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
import pandas as pd
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from mlflow.tracking import MlflowClient
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LinearRegression, LogisticRegression

from flywheel.infra import Endpoints
from flywheel.loop import EventTap
from services.monitor.app import create_app
from services.monitor.settings import Settings
from shared.events import DriftDetected, Event, FeedbackReceived, PredictionLogged
from shared.mlflow_specs import spec_tags
from shared.spec import ModelSpec

pytestmark = pytest.mark.integration

FEATURES = [{"name": "a", "type": "numeric"}, {"name": "b", "type": "numeric"}]
PREDICTIONS = 300
#: What a version's run logs under reference/: nothing, the frames, or a corrupt sample.
Frames = Literal["none", "good", "corrupt"]


def _register(uri: str, spec: ModelSpec, metrics: dict[str, float], frames: Frames) -> None:
    """Version 1 of ``spec``'s model, made champion, with reference frames as ``frames`` says."""
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(spec.name)
    rng = np.random.default_rng(0)
    sample = pd.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500)})
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        if spec.is_regression:
            target = 3 * sample["a"].to_numpy() + rng.normal(scale=2.0, size=500)
            model: LinearRegression | LogisticRegression = LinearRegression()
        else:
            target = np.where(sample["a"] > 0, *spec.classes)
            model = LogisticRegression()
        model.fit(sample, target)
        mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
        mlflow.log_metrics(metrics)
        if frames == "corrupt":
            (Path(tmp) / "features.parquet").write_bytes(b"not a parquet file")
            mlflow.log_artifact(str(Path(tmp) / "features.parquet"), artifact_path="reference")
        if frames == "good":
            sample.to_parquet(Path(tmp) / "features.parquet", index=False)
            answers = pd.DataFrame({"prediction": model.predict(sample)})
            answers.to_parquet(Path(tmp) / "predictions.parquet", index=False)
            mlflow.log_artifact(str(Path(tmp) / "features.parquet"), artifact_path="reference")
            mlflow.log_artifact(str(Path(tmp) / "predictions.parquet"), artifact_path="reference")
    mlflow.register_model(f"runs:/{run.info.run_id}/model", spec.name)
    for key, value in spec_tags(1, spec).items():
        client.set_registered_model_tag(spec.name, key, value)
    client.set_registered_model_alias(spec.name, "champion", "1")


@asynccontextmanager
async def _monitor(group: str) -> AsyncIterator[CollectorRegistry]:
    settings = Settings(window_size=100, reference_refresh_s=300.0)
    app: FastAPI = create_app(settings, name=group)
    async with app.router.lifespan_context(app):
        yield app.state.runtime.registry


def _prediction(model: str, rng: random.Random, value: bool) -> PredictionLogged:
    answer = {"predicted_value": rng.gauss(0, 3)} if value else {"predicted_class": "no"}
    return PredictionLogged(
        producer="it",
        request_id=uuid.uuid4().hex,
        model_name=model,
        version="1",
        variant="champion",
        features={"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)},
        confidence=None if value else 0.8,
        latency_ms=1.0,
        **answer,
    )


def _outcome(model: str, rng: random.Random, error_sd: float) -> FeedbackReceived:
    truth = rng.gauss(0, 3)
    return FeedbackReceived(
        producer="it",
        request_id=uuid.uuid4().hex,
        model_name=model,
        version="1",
        variant="champion",
        predicted_value=truth + rng.gauss(0, error_sd),
        true_value=truth,
    )


async def _send(infra: Endpoints, events: list[Event]) -> None:
    producer = AIOKafkaProducer(**infra.kafka.client_options())
    await producer.start()
    try:
        for event in events:
            await producer.send(event.topic.value, event.model_dump_json().encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _until(check: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.5)


async def test_a_champion_without_a_reference_and_a_regressor_s_rising_loss(
    infra_env: Endpoints,
) -> None:
    infra, suffix = infra_env, uuid.uuid4().hex[:8]
    external = ModelSpec.model_validate(
        {"name": f"it-ext-{suffix}", "label": "y", "classes": ["no", "yes"], "features": FEATURES}
    )
    corrupt = external.model_copy(update={"name": f"it-bad-{suffix}"})
    regressor = ModelSpec.model_validate(
        {"name": f"it-reg-{suffix}", "label": "y", "task": "regression", "features": FEATURES}
    )
    # The regressor's validation: rmse 2 (mean squared error 4).
    unusable: tuple[tuple[ModelSpec, Frames], ...] = ((external, "none"), (corrupt, "corrupt"))
    for spec, frames in unusable:
        await asyncio.to_thread(_register, infra.mlflow_uri, spec, {"accuracy": 0.9}, frames)
    await asyncio.to_thread(
        _register, infra.mlflow_uri, regressor, {"rmse": 2.0, "mae": 1.6, "r2": 0.6}, "good"
    )
    rng = random.Random(7)
    answers: list[Event] = [
        event
        for _ in range(PREDICTIONS)
        for event in (
            _prediction(external.name, rng, value=False),
            _prediction(corrupt.name, rng, value=False),
            _prediction(regressor.name, rng, value=True),
        )
    ]
    outcomes: list[Event] = [_outcome(regressor.name, rng, 2.0) for _ in range(200)]
    outcomes += [_outcome(regressor.name, rng, 6.0) for _ in range(600)]
    ours = (external.name, corrupt.name, regressor.name)

    def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    async with EventTap(infra.kafka) as tap, _monitor(f"monitor-it-{suffix}") as registry:
        await _send(infra, answers)
        await _until(
            lambda: (
                sample(registry, "monitor_observations_total", model_name=regressor.name)
                == PREDICTIONS
            ),
            within_s=180,
            what="the regressor's predictions counted",
        )
        for name in (external.name, corrupt.name):  # absent, and not a parquet file
            missing = {"model_name": name, "version": "1"}
            assert sample(registry, "monitor_reference_missing", **missing) == 1
            assert sample(registry, "monitor_observations_total", model_name=name) == 0
        await _send(infra, outcomes)
        drift = await tap.wait_for(
            DriftDetected, lambda d: d.model_name == regressor.name, within_s=180
        )
        await asyncio.sleep(2.0)  # time for any dead letter to reach the tap
        failures = sum(
            sample(registry, "monitor_model_failures_total", model_name=name) for name in ours
        )
    assert (drift.kind, drift.version, drift.variant) == ("concept", "1", "champion")
    (result,) = drift.features
    assert (result.feature, result.test) == ("squared_loss", "loss")
    assert result.threshold == pytest.approx(4.0)
    assert [d for d in tap.dead_letters if any(m.encode() in d.value for m in ours)] == []
    assert failures == 0
    # The regressor's answers were tested against its logged predictions, no data drift.
    assert not [
        e
        for e in tap.events
        if isinstance(e, DriftDetected) and e.model_name in ours and e.kind == "data"
    ]
