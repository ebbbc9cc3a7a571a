"""A team's own trainer on real Kafka, Redis and MLflow.

A model whose spec names the ``lightgbm`` entry point trains on data-arrived and
on drift, logged like Flywheel's own models; a trainer that raises ends in
model-rejected with its error.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import mlflow.sklearn
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flywheel.infra import Endpoints
from flywheel.loop import EventTap, publish_raw
from services.trainer.app import create_app
from services.trainer.settings import Settings
from shared.datasets import generate_customers, write_batch
from shared.events import (
    DataArrived,
    DriftDetected,
    Event,
    FeatureDrift,
    ModelRejected,
    ModelTrained,
)
from shared.mlflow_specs import register_spec
from shared.spec import ModelSpec, load_spec

pytestmark = pytest.mark.integration

#: The raising trainer below, as a spec names it (pytest imports this module by its name).
RAISING = f"{__name__}:raising"


def raising(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> object:
    raise ValueError(f"no GPU quota left for {spec.name}")


@pytest.fixture
async def trainer(infra_env: Endpoints) -> AsyncIterator[None]:
    """An in-process trainer in a consumer group of its own."""
    settings = Settings(coalesce_window_s=1.0, scheduler_tick_s=0.1)
    app = create_app(settings, name=f"trainer-custom-it-{uuid.uuid4().hex[:8]}")
    async with app.router.lifespan_context(app):
        yield


async def _model_with_trainer(infra: Endpoints, trainer: str) -> str:
    """A fresh model registered with the customer-segment spec and ``trainer``."""
    name = f"it-custom-{uuid.uuid4().hex[:8]}"
    spec = load_spec().model_copy(update={"name": name, "trainer": trainer})
    await asyncio.to_thread(register_spec, MlflowClient(infra.mlflow_uri), name, spec, "it")
    return name


async def _publish(infra: Endpoints, *events: Event) -> None:
    for event in events:
        await publish_raw(infra.kafka, event.topic.value, event.model_dump_json().encode())


def _drift(model: str) -> DriftDetected:
    now = datetime.now(UTC)
    return DriftDetected(
        producer="it",
        model_name=model,
        reference_version="1",
        window_size=300,
        reference_size=800,
        window_start=now,
        window_end=now,
        features=(
            FeatureDrift(feature="age", statistic=0.3, p_value=1e-9, threshold=0.01, drifted=True),
        ),
    )


async def _trained_by(tap: EventTap, cause: Event) -> ModelTrained:
    return await tap.wait_for(ModelTrained, lambda e: e.causation_id == cause.event_id, 120)


def _artifacts(client: MlflowClient, run_id: str, folder: str) -> set[str]:
    return {item.path for item in client.list_artifacts(run_id, folder)}


async def test_the_lightgbm_entry_point_trains_on_data_and_on_drift(
    infra: Endpoints, trainer: None, tmp_path: Path
) -> None:
    model = await _model_with_trainer(infra, "lightgbm")
    ref = write_batch(generate_customers(800, 21), tmp_path / "b.parquet")
    arrived = DataArrived(producer="it", model_name=model, dataset=ref)
    drift = _drift(model)
    async with EventTap(infra.kafka) as tap:
        await _publish(infra, arrived)
        on_data = await _trained_by(tap, arrived)
        await _publish(infra, drift)
        on_drift = await _trained_by(tap, drift)
    assert (on_data.trigger, on_drift.trigger) == ("data", "drift")
    for trained in (on_data, on_drift):
        assert trained.model_name == model
        assert trained.algorithm == "custom:lightgbm"
        assert (trained.metrics.accuracy or 0.0) > 0.6
        assert (trained.metrics.model_extra or {})["best_iteration"] >= 1

    client = MlflowClient(infra.mlflow_uri)
    run = client.get_run(on_drift.run_id)
    assert run.data.params["trainer"] == "lightgbm"
    assert run.data.tags["flywheel.event_id"] == drift.event_id
    assert {"accuracy", "macro_f1", "log_loss", "best_iteration"} <= set(run.data.metrics)
    assert _artifacts(client, run.info.run_id, "reference") >= {
        "reference/features.parquet",
        "reference/predictions.parquet",
    }
    assert "holdout/validation.parquet" in _artifacts(client, run.info.run_id, "holdout")
    # What the registry and the gateway load: the team's pipeline, whole.
    loaded = await asyncio.to_thread(mlflow.sklearn.load_model, on_drift.model_uri)
    rows = generate_customers(5, 99)[list(load_spec().feature_names)]
    assert loaded.predict_proba(rows).shape == (5, 3)
    assert sorted(loaded.classes_) == sorted(load_spec().classes)


async def test_a_raising_trainer_is_model_rejected_with_its_error(
    infra: Endpoints, trainer: None, tmp_path: Path
) -> None:
    model = await _model_with_trainer(infra, RAISING)
    ref = write_batch(generate_customers(600, 22), tmp_path / "b.parquet")
    arrived = DataArrived(producer="it", model_name=model, dataset=ref)
    async with EventTap(infra.kafka) as tap:
        await _publish(infra, arrived)
        rejected = await tap.wait_for(
            ModelRejected, lambda e: e.causation_id == arrived.event_id, 120
        )
        trained = [e for e in tap.events if isinstance(e, ModelTrained) and e.model_name == model]
    assert rejected.producer == "trainer"
    assert rejected.model_name == model
    [reason] = rejected.reasons
    assert reason.name == "trainer"
    assert reason.detail == f"{RAISING} raised ValueError: no GPU quota left for {model}"
    assert trained == []
