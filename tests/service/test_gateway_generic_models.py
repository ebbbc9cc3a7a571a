"""Models Flywheel did not train (LightGBM's own flavour, a native Booster, plain sklearn)
served through the generic path: loaded by ``shared.scoring`` from a real (temporary)
MLflow store, scored from a frame, answered in the spec's terms; one that cannot serve
its spec blocks no other model and readiness says why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import lightgbm
import mlflow
import mlflow.lightgbm
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from _gateway_fakes import (
    SPEC,
    SPEND_SPEC,
    FakeRoutingState,
    InMemoryFeatureStore,
    InMemoryPredictionRecords,
    registered,
    rows,
    spend_pipeline,
    spend_rows,
)
from fastapi import FastAPI
from mlflow.tracking import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from services.gateway.adapters import MlflowModelRegistry, ScorerModel
from services.gateway.app import GatewayPorts, create_app
from services.gateway.settings import Settings
from shared.datasets import generate_customers
from shared.events import PredictionLogged
from shared.spec import ModelSpec
from shared.testing import RecordingPublisher
from shared.torch_mlp import TRUSTED_TYPES


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One store for the module: creating MLflow's tables takes seconds.
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("gateway-generic")
    return uri


def _spec(name: str, base: ModelSpec) -> ModelSpec:
    return base.model_copy(update={"name": name})


def _training(spec: ModelSpec) -> tuple[pd.DataFrame, pd.Series]:
    frame = generate_customers(600, seed=3)
    x = frame[list(spec.feature_names)].copy()
    for name in spec.categorical_features:
        x[name] = pd.Categorical(x[name], categories=_categories(spec, name))
    return x, frame[spec.label]


def _categories(spec: ModelSpec, name: str) -> list[str]:
    return list(next(f.categories for f in spec.features if f.name == name))


def _as_frame(spec: ModelSpec, request_rows: list[dict[str, Any]]) -> pd.DataFrame:
    x = pd.DataFrame(request_rows)[list(spec.feature_names)]
    for name in spec.categorical_features:
        x[name] = pd.Categorical(x[name], categories=_categories(spec, name))
    return x


def _champion(tracking_uri: str, name: str, log: Any, model: Any, **options: Any) -> None:
    """Log ``model`` with ``log``, register it as ``name`` version 1 and make it champion."""
    with mlflow.start_run():
        # Requirements given: inferring them loads the model again in a subprocess (slow).
        info = log(model, name="model", pip_requirements=["scikit-learn"], **options)
    version = mlflow.register_model(str(info.model_uri), name).version
    MlflowClient(tracking_uri).set_registered_model_alias(name, "champion", str(version))


@dataclass
class _Served:
    client: httpx.AsyncClient
    app: FastAPI
    publisher: RecordingPublisher


async def _gateway(tracking_uri: str, *specs: ModelSpec) -> AsyncIterator[_Served]:
    """A gateway whose models load from the MLflow store at ``tracking_uri``, all loaded."""
    publisher = RecordingPublisher()
    ports = GatewayPorts(
        MlflowModelRegistry(tracking_uri),
        FakeRoutingState(),
        InMemoryPredictionRecords(),
        publisher,
        InMemoryFeatureStore(),
        registered(*specs),
    )
    app = create_app(Settings(max_batch=50), ports=ports)
    await app.state.gateway.fleet.load_all()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield _Served(client, app, publisher)


async def test_a_lightgbm_regressor_and_a_native_booster_answer_their_own_values(
    tracking_uri: str,
) -> None:
    sklearn_api, native = _spec("spend-lgbm", SPEND_SPEC), _spec("spend-booster", SPEND_SPEC)
    x, y = _training(SPEND_SPEC)
    regressor = lightgbm.LGBMRegressor(n_estimators=20, verbose=-1).fit(x, y)
    booster = lightgbm.train(
        {"objective": "regression", "verbose": -1}, lightgbm.Dataset(x, y), num_boost_round=15
    )
    _champion(tracking_uri, sklearn_api.name, mlflow.lightgbm.log_model, regressor)
    _champion(tracking_uri, native.name, mlflow.lightgbm.log_model, booster)
    batch = spend_rows(4)
    async for gateway in _gateway(tracking_uri, sklearn_api, native):
        for name, model in ((sklearn_api.name, regressor), (native.name, booster)):
            answer = await gateway.client.post(
                f"/v1/models/{name}/predict", json={"instances": batch}
            )
            assert answer.status_code == 200, answer.text
            values = [p["value"] for p in answer.json()["predictions"]]
            expected = model.predict(_as_frame(SPEND_SPEC, batch))
            np.testing.assert_allclose(values, expected, rtol=1e-6)
        served = gateway.app.state.gateway.fleet.held(native.name)
        loaded = served.pool.snapshot.champion.model
        assert isinstance(loaded, ScorerModel)
        assert loaded.flavor == "lightgbm"
        await gateway.app.state.prediction_events.drain_once()
        logged = [e for e in gateway.publisher.events if isinstance(e, PredictionLogged)]
        assert sorted(e.model_name for e in logged) == [native.name] * 4 + [sklearn_api.name] * 4
        assert all(e.predicted_value is not None and e.predicted_class is None for e in logged)


async def test_a_lightgbm_classifier_answers_in_the_specs_class_order(tracking_uri: str) -> None:
    spec = _spec("segment-lgbm", SPEC)
    x, y = _training(SPEC)
    classifier = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(x, y)
    _champion(tracking_uri, spec.name, mlflow.lightgbm.log_model, classifier)
    row = rows(1)[0]
    async for gateway in _gateway(tracking_uri, spec):
        answer = await gateway.client.post(
            f"/v1/models/{spec.name}/predict", json={"features": row}
        )
        assert answer.status_code == 200, answer.text
        predicted = answer.json()["predictions"][0]
        expected = classifier.predict_proba(_as_frame(SPEC, [row]))[0]
        by_class = dict(zip(map(str, classifier.classes_), expected, strict=True))
        assert predicted["probabilities"] == pytest.approx(by_class)
        assert predicted["predicted_class"] == max(by_class, key=by_class.__getitem__)
        assert predicted["class_id"] == SPEC.classes.index(predicted["predicted_class"])


async def test_flywheels_own_pipeline_keeps_the_fast_path_and_plain_sklearn_the_generic(
    tracking_uri: str,
) -> None:
    own, plain = _spec("spend-own", SPEND_SPEC), _spec("spend-plain", SPEND_SPEC)
    _champion(
        tracking_uri,
        own.name,
        mlflow.sklearn.log_model,
        spend_pipeline(1),
        skops_trusted_types=TRUSTED_TYPES,  # as the trainer logs its pipelines
    )
    frame = generate_customers(300, seed=4)
    encode = ColumnTransformer(
        [("plan", OneHotEncoder(), list(SPEND_SPEC.categorical_features))],
        remainder="passthrough",
    )
    linear = Pipeline([("encode", encode), ("model", LinearRegression())])
    linear.fit(frame[list(SPEND_SPEC.feature_names)], frame[SPEND_SPEC.label])
    _champion(tracking_uri, plain.name, mlflow.sklearn.log_model, linear)
    registry = MlflowModelRegistry(tracking_uri)
    assert isinstance(registry.load(own.name, "1", own), Pipeline)  # scored from rows
    generic = registry.load(plain.name, "1", plain)
    assert isinstance(generic, ScorerModel)
    batch = spend_rows(3)
    values = generic.predict(pd.DataFrame(batch)[list(SPEND_SPEC.feature_names)])
    np.testing.assert_allclose(values, linear.predict(pd.DataFrame(batch)), rtol=1e-9)


async def test_a_model_that_cannot_serve_its_spec_blocks_no_other_and_readyz_says_why(
    tracking_uri: str,
) -> None:
    wrong, fine = _spec("segment-wrong-classes", SPEC), _spec("spend-fine", SPEND_SPEC)
    x, y = _training(SPEC)
    elsewhere = y.map(lambda label: f"tier-{label}")  # classes the spec does not have
    classifier = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(x, elsewhere)
    _champion(tracking_uri, wrong.name, mlflow.lightgbm.log_model, classifier)
    x_spend, y_spend = _training(SPEND_SPEC)
    regressor = lightgbm.LGBMRegressor(n_estimators=5, verbose=-1).fit(x_spend, y_spend)
    _champion(tracking_uri, fine.name, mlflow.lightgbm.log_model, regressor)
    async for gateway in _gateway(tracking_uri, wrong, fine):
        client = gateway.client
        ok = await client.post(
            f"/v1/models/{fine.name}/predict", json={"features": spend_rows(1)[0]}
        )
        refused = await client.post(
            f"/v1/models/{wrong.name}/predict", json={"features": rows(1)[0]}
        )
        assert ok.status_code == 200, ok.text
        assert refused.status_code == 503, refused.text
        listed = (await client.get("/v1/models")).json()["by_model"]
        assert listed[fine.name]["state"] == "serving"
        assert listed[wrong.name]["state"] == "failed"
        error = listed[wrong.name]["error"]
        assert "lightgbm model" in error
        assert "tier-" in error
        assert "not in the spec" in error
