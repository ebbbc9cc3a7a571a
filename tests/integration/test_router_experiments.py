"""Whole experiments through real Kafka, Redis and MLflow: one to promotion, one to rollback."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import mlflow
import pytest
from aiokafka import AIOKafkaProducer
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

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
    ModelRolledBack,
    PredictionLogged,
    Variant,
)

pytestmark = pytest.mark.integration

SETTINGS = {
    "ramp_shares": (0.2, 0.5),
    "stage_min_labelled": 10,
    "look_every": 20,
    "n_star": 400.0,
    "min_labelled_per_arm": 60,
    "min_correct_per_arm": 5,
    "min_wrong_per_arm": 5,
    # Labels follow their predictions at once: a 2 s outcome window holds them all.
    "outcome_window_s": 2.0,
    "outcome_grace_s": 1.0,
    "look_interval_s": 0.5,
}


def _two_versions(uri: str, name: str) -> None:
    """Register versions 1 (champion) and 2 (challenger) of a tiny model."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(name)
    client = MlflowClient(uri)
    for _ in range(2):
        with mlflow.start_run() as run:
            model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], ["a", "a", "b", "b"])
            mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
        mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
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


def _pair(
    model: str, experiment_id: str, share: float, rng: random.Random, acc: dict[str, float]
) -> list[Event]:
    variant: Variant = "challenger" if rng.random() < share else "champion"
    version = "2" if variant == "challenger" else "1"
    correct = rng.random() < acc[variant]
    routed = {"experiment_id": experiment_id, "challenger_share": share}
    prediction = PredictionLogged(
        producer="it",
        request_id=uuid.uuid4().hex,
        model_name=model,
        version=version,
        variant=variant,
        features={},
        predicted_class="a",
        confidence=0.8,
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
        predicted_class="a",
        true_label="a" if correct else "b",
        correct=correct,
        **routed,
    )
    return [prediction, feedback]


async def _send(producer: AIOKafkaProducer, events: list[Event]) -> None:
    sends = [await producer.send(e.topic.value, e.model_dump_json().encode()) for e in events]
    await asyncio.gather(*sends)


async def _drive(
    infra: Endpoints,
    tap: EventTap,
    approval: ModelApproved,
    acc: dict[str, float],
    done: Callable[[Event], bool],
    within_s: float = 120.0,
) -> Event:
    """Send outcomes by the latest published split until an event satisfies ``done``."""
    experiment_id, rng = experiment_id_for(approval), random.Random(1)
    producer = AIOKafkaProducer(**infra.kafka.client_options())
    await producer.start()
    try:
        for _ in range(int(within_s / 0.5)):
            verdict = [e for e in tap.events if done(e)]
            if verdict:
                return verdict[0]
            updates = [
                e
                for e in tap.events
                if isinstance(e, ExperimentUpdated) and e.experiment_id == experiment_id
            ]
            share = updates[-1].challenger_share if updates else 0.0
            if share > 0:
                batch = [
                    ev
                    for _ in range(20)
                    for ev in _pair(approval.model_name, experiment_id, share, rng, acc)
                ]
                await _send(producer, batch)
            await asyncio.sleep(0.5)
    finally:
        await producer.stop()
    raise TimeoutError("no verdict")


def _approval(model: str) -> ModelApproved:
    return ModelApproved(
        producer="it",
        model_name=model,
        version="2",
        run_id="r2",
        alias="challenger",
        champion_version="1",
        metrics=ModelMetrics(accuracy=0.8, macro_f1=0.8, validation_rows=10),
    )


def _of(model: str, kind: type[Event]) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, kind) and getattr(e, "model_name", None) == model


async def test_a_better_challenger_ramps_survives_a_restart_and_is_promoted(
    infra_env: Endpoints,
) -> None:
    infra = infra_env
    model, group = f"it-router-{uuid.uuid4().hex[:8]}", f"router-it-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_two_versions, infra.mlflow_uri, model)
    approval = _approval(model)
    acc = {"champion": 0.55, "challenger": 0.95}
    async with EventTap(infra.kafka) as tap:
        async with _router(group):
            await _send_one(infra, approval)
            # Until the ramp reached its last stage; then the router process stops.
            await _drive(
                infra,
                tap,
                approval,
                acc,
                lambda e: (
                    isinstance(e, ExperimentUpdated)
                    and e.model_name == model
                    and e.challenger_share == 0.5
                ),
            )
        async with _router(group) as client:  # a fresh process on the same Redis state
            promoted = await _drive(infra, tap, approval, acc, _of(model, ModelPromoted))
            report = (
                await client.get(f"/v1/experiments/{experiment_id_for(approval)}/report")
            ).json()
        updates = [
            e for e in tap.events if isinstance(e, ExperimentUpdated) and e.model_name == model
        ]
    assert isinstance(promoted, ModelPromoted)
    assert (promoted.version, promoted.previous_champion) == ("2", "1")
    assert promoted.correlation_id == approval.correlation_id
    assert [(u.status, u.challenger_share) for u in updates] == [
        ("running", 0.2),
        ("running", 0.5),
        ("promoted", 0.0),
    ]
    aliases = MlflowClient(infra.mlflow_uri).get_registered_model(model).aliases
    assert aliases == {"champion": "2", "champion-1": "1"}  # `flywheel rollback` returns to 1
    assert report["status"] == "promoted"
    assert report["decision"] == "promote"
    assert report["primary"]["always_valid_ci"][0] > 0
    assert report["srm"]["mismatch"] is False
    labelled = report["arms"]["champion"]["labelled"]
    assert labelled >= SETTINGS["min_labelled_per_arm"]


async def test_a_worse_challenger_is_rolled_back(infra_env: Endpoints) -> None:
    infra = infra_env
    model, group = f"it-router-{uuid.uuid4().hex[:8]}", f"router-it-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_two_versions, infra.mlflow_uri, model)
    approval = _approval(model)
    acc = {"champion": 0.95, "challenger": 0.5}
    async with EventTap(infra.kafka) as tap, _router(group):
        await _send_one(infra, approval)
        rolled = await _drive(infra, tap, approval, acc, _of(model, ModelRolledBack))
    assert isinstance(rolled, ModelRolledBack)
    assert (rolled.version, rolled.rolled_back_version) == ("1", "2")
    assert "primary_worse" in rolled.reason
    aliases = MlflowClient(infra.mlflow_uri).get_registered_model(model).aliases
    assert aliases == {"champion": "1"}


async def _send_one(infra: Endpoints, event: Event) -> None:
    producer = AIOKafkaProducer(**infra.kafka.client_options())
    await producer.start()
    try:
        await producer.send_and_wait(event.topic.value, event.model_dump_json().encode())
    finally:
        await producer.stop()
