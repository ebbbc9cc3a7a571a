"""The registry gates any model on real Kafka and MLflow: a regressor's model-trained is
approved and a worse one rejected by non-inferiority on RMSE/MAE with the numbers; a
native LightGBM model is gated (approved, not dead-lettered, not packaged for BentoML);
one logged without a holdout is rejected naming the holdout and how to supply it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lightgbm
import mlflow
import mlflow.lightgbm
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
import uvicorn
from _support import free_port
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from flywheel.infra import Endpoints
from flywheel.loop import EventTap, publish_event
from services.registry.app import create_app
from services.registry.settings import Settings
from shared.datasets import generate_customers
from shared.events import ModelApproved, ModelMetrics, ModelRejected, ModelTrained
from shared.spec import ModelSpec, load_spec

pytestmark = pytest.mark.integration

TOKEN = "it-any-model-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLASSIFIER = load_spec()
FEATURES = list(CLASSIFIER.feature_names)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _customers(n: int, seed: int) -> pd.DataFrame:
    """Customers with a learnable numeric label (the generator's columns are independent)."""
    frame = generate_customers(n, seed)
    noise = np.random.default_rng(seed).normal(0, 5, size=n)
    return frame.assign(lifetime_value=3 * frame["age"] + 2 * frame["tenure_months"] + noise)


@dataclass
class Registry:
    client: httpx.AsyncClient
    infra: Endpoints

    async def create(self, spec: ModelSpec) -> None:
        body = {"name": spec.name, "spec": spec.model_dump(mode="json"), "requested_by": "it"}
        answer = await self.client.post("/v1/models", json=body, headers=AUTH)
        assert answer.status_code == 201, answer.text


@pytest.fixture
async def registry(
    infra_env: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Registry]:
    """The registry app on a free port, consuming model-trained from the real broker."""
    monkeypatch.setenv("FLYWHEEL_MODEL_NAME", _unique("it-default"))
    monkeypatch.setenv("REGISTRY_ADMIN_TOKEN", TOKEN)
    port = free_port()
    settings = Settings(port=port, latency_budget_ms=250.0)
    app = create_app(settings, name=_unique("registry-it"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield Registry(client, infra_env)
    finally:
        server.should_exit = True
        await task


def _log(spec: ModelSpec, log_model: Any, model: Any, holdout: pd.DataFrame, tmp: Path) -> str:
    """Log ``model`` with an input signature and ``holdout`` in a run of its own (an empty
    holdout: none logged)."""
    mlflow.set_experiment(spec.name)
    with mlflow.start_run() as run:
        signature = infer_signature(holdout[FEATURES].head(20))
        # Given requirements: inferring them imports the model in a subprocess (seconds).
        log_model(model, name="model", signature=signature, pip_requirements=["mlflow"])
        if not holdout.empty:
            path = tmp / f"{run.info.run_id}" / "validation.parquet"
            path.parent.mkdir()
            holdout.to_parquet(path)
            mlflow.log_artifact(str(path), artifact_path="holdout")
    return str(run.info.run_id)


def _trained(spec: ModelSpec, run_id: str, metrics: ModelMetrics, algorithm: str) -> ModelTrained:
    return ModelTrained(
        producer="it",
        model_name=spec.name,
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        algorithm=algorithm,
        metrics=metrics,
        data_version="d" * 64,
        trigger="import",
    )


def _regressor(kind: str, spec: ModelSpec) -> Pipeline:
    frame = _customers(1500, 3)
    encode = ColumnTransformer(
        [("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])], remainder="passthrough"
    )
    model = Ridge() if kind == "good" else DummyRegressor()
    return Pipeline([("encode", encode), ("model", model)]).fit(frame[FEATURES], frame[spec.label])


async def _decision(tap: EventTap, run_id: str) -> ModelApproved | ModelRejected:
    def ours(event: ModelApproved | ModelRejected) -> bool:
        return event.run_id == run_id

    approved = asyncio.create_task(tap.wait_for(ModelApproved, ours, 180))
    rejected = asyncio.create_task(tap.wait_for(ModelRejected, ours, 180))
    done, pending = await asyncio.wait({approved, rejected}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    decision = done.pop().result()
    assert isinstance(decision, ModelApproved | ModelRejected)
    return decision


async def test_a_regressor_is_approved_and_a_worse_one_rejected_by_non_inferiority(
    registry: Registry, tmp_path: Path
) -> None:
    spec = ModelSpec(
        name=_unique("it-ltv"),
        label="lifetime_value",
        task="regression",
        features=CLASSIFIER.features,
    )
    await registry.create(spec)
    mlflow.set_tracking_uri(registry.infra.mlflow_uri)
    holdout = _customers(500, 99)[[*FEATURES, spec.label]]
    metrics = ModelMetrics(rmse=6.0, mae=4.0, r2=0.9, validation_rows=500)
    runs = [
        _log(spec, mlflow.sklearn.log_model, _regressor(k, spec), holdout, tmp_path)
        for k in ("good", "bad")
    ]
    async with EventTap(registry.infra.kafka) as tap:
        await publish_event(registry.infra.kafka, _trained(spec, runs[0], metrics, "ridge"))
        first = await _decision(tap, runs[0])
        await publish_event(registry.infra.kafka, _trained(spec, runs[1], metrics, "dummy"))
        second = await _decision(tap, runs[1])

    assert isinstance(first, ModelApproved), first
    assert (first.version, first.alias) == ("1", "champion")
    assert isinstance(second, ModelRejected), second
    [gate] = [g for g in second.reasons if g.name == "non_inferiority"]
    assert "vs champion v1 on 500 fresh holdout rows" in gate.detail
    assert "RMSE" in gate.detail
    assert "> allowed" in gate.detail
    tags = MlflowClient(registry.infra.mlflow_uri).get_model_version(spec.name, "1").tags
    for name in ("r2", "rmse", "schema", "finite_output", "determinism", "latency"):
        assert tags[f"gate.{name}"].startswith("passed: "), name
    assert tags["flywheel.task"] == "regression"
    assert tags["flywheel.bento_tag"] == f"{spec.name}:v1"
    assert [d for d in tap.dead_letters if any(r.encode() in d.value for r in runs)] == []


async def test_a_native_lightgbm_model_is_gated_and_one_without_a_holdout_named(
    registry: Registry, tmp_path: Path
) -> None:
    spec = CLASSIFIER.model_copy(update={"name": _unique("it-lgbm")})
    await registry.create(spec)
    mlflow.set_tracking_uri(registry.infra.mlflow_uri)
    frame = generate_customers(3000, 21)
    x = frame[FEATURES].astype({"plan": "category"})
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_leaves": 15}
    codes = frame[spec.label].map({c: i for i, c in enumerate(spec.classes)})
    booster = lightgbm.train(params, lightgbm.Dataset(x, codes), num_boost_round=40)
    holdout = generate_customers(600, 99)[[*FEATURES, spec.label]]
    with_holdout = _log(spec, mlflow.lightgbm.log_model, booster, holdout, tmp_path)
    without = _log(spec, mlflow.lightgbm.log_model, booster, holdout.head(0), tmp_path)
    metrics = ModelMetrics(accuracy=0.8, macro_f1=0.8, validation_rows=600)
    async with EventTap(registry.infra.kafka) as tap:
        await publish_event(registry.infra.kafka, _trained(spec, with_holdout, metrics, "lgbm"))
        gated = await _decision(tap, with_holdout)
        await publish_event(registry.infra.kafka, _trained(spec, without, metrics, "lgbm"))
        missing = await _decision(tap, without)

    assert isinstance(gated, ModelApproved), gated
    tags = MlflowClient(registry.infra.mlflow_uri).get_model_version(spec.name, "1").tags
    assert tags["gate.finite_output"].startswith("passed: ")
    assert tags["gate.non_inferiority"] == "passed: no champion yet"
    assert "flywheel.bento_tag" not in tags  # bentoml.sklearn cannot take a Booster
    assert isinstance(missing, ModelRejected), missing
    [gate] = missing.reasons
    assert gate.name == "holdout"
    assert f"run {without} logged no holdout" in gate.detail
    assert f"flywheel models import {spec.name} --model-uri URI --holdout FILE" in gate.detail
    runs = (with_holdout.encode(), without.encode())
    assert [d for d in tap.dead_letters if any(r in d.value for r in runs)] == []
