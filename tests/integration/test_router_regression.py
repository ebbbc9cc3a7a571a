"""An experiment between two regressors through real Kafka, Redis and MLflow: the spec's
loss, declared when the experiment opens, decides from feedback events."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import mlflow
import pytest
from aiokafka import AIOKafkaProducer
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LinearRegression

from flywheel.infra import Endpoints
from flywheel.loop import EventTap
from services.router.app import create_app
from services.router.core import experiment_id_for
from services.router.settings import Settings
from shared.events import (
    Event,
    ExperimentUpdated,
    FeedbackReceived,
    ModelApproved,
    ModelMetrics,
    ModelPromoted,
    PredictionLogged,
    Variant,
)
from shared.mlflow_specs import spec_tags
from shared.spec import ModelSpec

pytestmark = pytest.mark.integration

SETTINGS = {
    "ramp_shares": (0.2, 0.5),
    "stage_min_labelled": 10,
    "look_every": 20,
    "n_star": 400.0,
    "min_labelled_per_arm": 60,
    # Feedback follows its prediction at once, but a loaded machine's consumers lag by
    # seconds: a generous window keeps timely feedback from being counted late.
    "outcome_window_s": 20.0,
    "outcome_grace_s": 10.0,
    "look_interval_s": 0.5,
}
#: Each arm's error sd: the challenger's mean absolute error is a third of the champion's.
ERROR_SD: dict[Variant, float] = {"champion": 3.0, "challenger": 1.0}


def _two_regressors(uri: str, name: str) -> None:
    """Register a regression spec (loss: absolute) and versions 1 and 2 of a tiny regressor."""
    spec = ModelSpec.model_validate(
        {
            "name": name,
            "label": "spend",
            "task": "regression",
            "loss": "absolute",
            "features": [{"name": "tenure", "type": "numeric"}],
        }
    )
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(name)
    client = MlflowClient(uri)
    for _ in range(2):
        with mlflow.start_run() as run:
            model = LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 2.0, 3.0])
            mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
        mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    for key, value in spec_tags(1, spec).items():
        client.set_registered_model_tag(name, key, value)
    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "challenger", "2")


@asynccontextmanager
async def _router(group: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(**SETTINGS), name=group)  # type: ignore[arg-type]
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client,
    ):
        yield client


def _pair(model: str, experiment_id: str, share: float, rng: random.Random) -> list[Event]:
    """A routed regression answer (no class) and its true value."""
    variant: Variant = "challenger" if rng.random() < share else "champion"
    version = "2" if variant == "challenger" else "1"
    routed = {"experiment_id": experiment_id, "challenger_share": share}
    true_value = rng.uniform(50, 150)
    prediction = PredictionLogged(
        producer="it",
        request_id=uuid.uuid4().hex,
        model_name=model,
        version=version,
        variant=variant,
        features={"tenure": 2.0},
        predicted_value=true_value + rng.gauss(0.0, ERROR_SD[variant]),
        latency_ms=rng.uniform(1, 3),
        **routed,
    )
    feedback = FeedbackReceived.caused_by(
        prediction,
        producer="it",
        request_id=prediction.request_id,
        model_name=model,
        version=version,
        variant=variant,
        predicted_value=prediction.predicted_value,
        true_value=true_value,
        **routed,
    )
    return [prediction, feedback]


async def _send(producer: AIOKafkaProducer, events: list[Event]) -> None:
    sends = [await producer.send(e.topic.value, e.model_dump_json().encode()) for e in events]
    await asyncio.gather(*sends)


async def _drive_to_promotion(
    infra: Endpoints, tap: EventTap, approval: ModelApproved, within_s: float = 300.0
) -> ModelPromoted:
    """Send regression outcomes by the latest published split until the promotion."""
    experiment_id, rng = experiment_id_for(approval), random.Random(1)
    producer = AIOKafkaProducer(**infra.kafka.client_options())
    await producer.start()
    try:
        await producer.send_and_wait(approval.topic.value, approval.model_dump_json().encode())
        for _ in range(int(within_s)):
            for event in tap.events:
                if isinstance(event, ModelPromoted) and event.model_name == approval.model_name:
                    return event
            updates = [
                e
                for e in tap.events
                if isinstance(e, ExperimentUpdated) and e.experiment_id == experiment_id
            ]
            share = updates[-1].challenger_share if updates else 0.0
            if share > 0:
                batch = [
                    ev
                    for _ in range(10)
                    for ev in _pair(approval.model_name, experiment_id, share, rng)
                ]
                await _send(producer, batch)
            await asyncio.sleep(1.0)
    finally:
        await producer.stop()
    raise TimeoutError("no verdict")


async def test_a_regressor_with_a_lower_absolute_error_is_promoted(infra_env: Endpoints) -> None:
    infra = infra_env
    model, group = f"it-regr-{uuid.uuid4().hex[:8]}", f"router-it-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_two_regressors, infra.mlflow_uri, model)
    approval = ModelApproved(
        producer="it",
        model_name=model,
        version="2",
        run_id="r2",
        alias="challenger",
        champion_version="1",
        metrics=ModelMetrics(rmse=1.0, mae=0.8, r2=0.9, validation_rows=10),
    )
    async with EventTap(infra.kafka) as tap, _router(group) as client:
        report_url = f"/v1/experiments/{experiment_id_for(approval)}/report"
        try:
            promoted = await _drive_to_promotion(infra, tap, approval)
        except TimeoutError:  # the report says why: its reasons, sample and intervals
            pytest.fail(f"no verdict in time: {(await client.get(report_url)).text[:4000]}")
        report = (await client.get(report_url)).json()
        # The experiment's own updates (the state guard may first announce the champion
        # it found in MLflow's aliases on an empty Redis).
        updates = [
            e
            for e in tap.events
            if isinstance(e, ExperimentUpdated) and e.experiment_id == experiment_id_for(approval)
        ]
    assert (promoted.version, promoted.previous_champion) == ("2", "1")
    assert updates[0].reason == "primary_metric:absolute_error"
    assert [(u.status, u.challenger_share) for u in updates] == [
        ("running", 0.2),
        ("running", 0.5),
        ("promoted", 0.0),
    ]
    aliases = MlflowClient(infra.mlflow_uri).get_registered_model(model).aliases
    assert aliases == {"champion": "2", "champion-1": "1"}
    assert report["primary_metric"] == "absolute_error"
    primary = report["primary"]
    assert (primary["name"], primary["lower_is_better"]) == ("absolute_error", True)
    assert primary["always_valid_ci"][1] < 0  # the challenger's mean loss is confidently lower
    champion, challenger = report["arms"]["champion"], report["arms"]["challenger"]
    assert champion["loss_outcomes"] >= SETTINGS["min_labelled_per_arm"]
    # Mean absolute error of a normal error is sd·√(2/π): about 2.4 and 0.8.
    assert champion["mae"] > 1.5 > challenger["mae"] > 0.5
    assert challenger["accuracy"] is None
