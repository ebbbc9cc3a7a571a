"""A regression model trained by the trainer on real Kafka, Redis and MLflow."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_diabetes

from flywheel.infra import Endpoints
from flywheel.loop import EventTap, publish_raw
from services.trainer.app import create_app
from services.trainer.settings import Settings
from shared.datasets import generate_customers, write_batch
from shared.events import DataArrived, ModelTrained
from shared.mlflow_specs import register_spec
from shared.spec import FeatureSpec, ModelSpec, load_spec

pytestmark = pytest.mark.integration


@pytest.fixture
async def trainer(infra_env: Endpoints, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """An in-process trainer (its default model a fresh name) in a consumer group of its own."""
    model = f"it-trainer-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FLYWHEEL_MODEL_NAME", model)
    # 442 diabetes rows are one batch: train on it rather than wait for 500 new rows.
    settings = Settings(coalesce_window_s=1.0, scheduler_tick_s=0.1, min_new_rows=1)
    app = create_app(settings, name=f"trainer-it-{uuid.uuid4().hex[:8]}")
    async with app.router.lifespan_context(app):
        yield model


def _diabetes_spec(name: str) -> ModelSpec:
    features = load_diabetes(as_frame=True).feature_names
    return ModelSpec(
        name=name,
        label="progression",
        task="regression",
        features=tuple(FeatureSpec(name=str(f), type="numeric") for f in features),
    )


def _diabetes() -> pd.DataFrame:
    frame: pd.DataFrame = load_diabetes(as_frame=True).frame
    return frame.rename(columns={"target": "progression"})


async def _trained_on(infra: Endpoints, arrival: DataArrived) -> ModelTrained:
    async with EventTap(infra.kafka) as tap:
        await publish_raw(infra.kafka, arrival.topic.value, arrival.model_dump_json().encode())
        return await tap.wait_for(ModelTrained, lambda e: e.causation_id == arrival.event_id, 180)


def _artifact(infra: Endpoints, run_id: str, path: str, into: Path) -> pd.DataFrame:
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=path, tracking_uri=infra.mlflow_uri, dst_path=str(into)
    )
    return pd.read_parquet(local)


async def test_a_registered_regression_model_trains_and_logs_its_metrics_and_predictions(
    infra: Endpoints, trainer: str, tmp_path: Path
) -> None:
    name = f"it-diabetes-{uuid.uuid4().hex[:8]}"
    spec = _diabetes_spec(name)
    client = MlflowClient(infra.mlflow_uri)
    await asyncio.to_thread(register_spec, client, name, spec, "it")
    ref = write_batch(_diabetes(), tmp_path / "diabetes.parquet")

    trained = await _trained_on(infra, DataArrived(producer="it", model_name=name, dataset=ref))

    metrics = trained.metrics
    assert metrics.is_regression
    assert metrics.accuracy is None
    assert (metrics.r2 or 0) > 0.3  # the mean scores 0
    assert 0 < (metrics.mae or 0) <= (metrics.rmse or 0)
    run = client.get_run(trained.run_id)
    for key in ("rmse", "mae", "r2"):
        assert run.data.metrics[key] == pytest.approx(getattr(metrics, key))
    assert "accuracy" not in run.data.metrics
    assert run.data.params["task"] == "regression"
    assert client.get_experiment(run.info.experiment_id).name == name
    logged = {artifact.path for artifact in client.list_artifacts(trained.run_id)}
    assert "predicted_vs_true.png" in logged
    assert "confusion_matrix.png" not in logged

    features = _artifact(infra, trained.run_id, "reference/features.parquet", tmp_path)
    predictions = _artifact(infra, trained.run_id, "reference/predictions.parquet", tmp_path)
    holdout = _artifact(infra, trained.run_id, "holdout/validation.parquet", tmp_path)
    assert list(features.columns) == list(spec.feature_names)
    assert list(predictions.columns) == ["prediction"]
    assert len(predictions) == len(features)
    assert predictions["prediction"].dtype == np.float64
    assert len(holdout) == metrics.validation_rows
    assert holdout["progression"].dtype == np.float64

    loaded = await asyncio.to_thread(mlflow.sklearn.load_model, trained.model_uri)
    np.testing.assert_allclose(loaded.predict(features), predictions["prediction"], rtol=1e-6)


async def test_a_classifiers_run_logs_its_predicted_labels_on_the_reference_rows(
    infra: Endpoints, trainer: str, tmp_path: Path
) -> None:
    ref = write_batch(generate_customers(600, 4), tmp_path / "segment.parquet")

    trained = await _trained_on(infra, DataArrived(producer="it", model_name=trainer, dataset=ref))

    assert not trained.metrics.is_regression
    logged = {a.path for a in MlflowClient(infra.mlflow_uri).list_artifacts(trained.run_id)}
    assert "confusion_matrix.png" in logged
    features = _artifact(infra, trained.run_id, "reference/features.parquet", tmp_path)
    predictions = _artifact(infra, trained.run_id, "reference/predictions.parquet", tmp_path)
    assert len(predictions) == len(features)
    assert set(predictions["prediction"]) <= set(load_spec().classes)
    loaded = await asyncio.to_thread(mlflow.sklearn.load_model, trained.model_uri)
    assert list(loaded.predict(features)) == list(predictions["prediction"])
