"""Trainer triggers on real Kafka, Redis and MLflow: storms coalesce, drift keeps lineage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from flywheel.cli import app as cli
from flywheel.demo_models import card_fraud_spec, generate_transactions
from flywheel.infra import Endpoints
from flywheel.loop import EventTap
from services.trainer.app import create_app
from services.trainer.settings import Settings
from shared.datasets import generate_customers, write_batch
from shared.events import (
    DataArrived,
    DriftDetected,
    Event,
    FeatureDrift,
    ModelTrained,
    RetrainModel,
)
from shared.kafka_security import KafkaConnection
from shared.mlflow_specs import register_spec

pytestmark = pytest.mark.integration

WINDOW_S = 2.0


@pytest.fixture
async def trainer(infra_env: Endpoints, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """An in-process trainer for a fresh model name, in a consumer group of its own."""
    model = f"it-trainer-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FLYWHEEL_MODEL_NAME", model)
    settings = Settings(coalesce_window_s=WINDOW_S, scheduler_tick_s=0.1)
    app = create_app(settings, name=f"trainer-it-{uuid.uuid4().hex[:8]}")
    async with app.router.lifespan_context(app):
        yield model


async def _publish(kafka: KafkaConnection, *events: Event) -> None:
    # One producer for all: a start per event (metadata, connection) spread a storm over
    # more than the coalescing window on a slow machine, and it trained twice.
    producer = AIOKafkaProducer(**kafka.client_options())
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(event.topic.value, event.model_dump_json().encode())
    finally:
        await producer.stop()


def _runs_answering(infra: Endpoints, model: str, event_ids: set[str]) -> list[dict[str, str]]:
    client = MlflowClient(infra.mlflow_uri)
    experiment = client.get_experiment_by_name(model)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    tags = [run.data.tags for run in runs]
    return [t for t in tags if event_ids & set(t["flywheel.trigger_ids"].split(","))]


async def test_a_storm_of_twenty_data_arrivals_trains_exactly_once(
    infra: Endpoints, trainer: str, tmp_path: Path
) -> None:
    refs = [write_batch(generate_customers(60, s), tmp_path / f"b{s}.parquet") for s in range(20)]
    storm = [DataArrived(producer="it", dataset=ref) for ref in refs]
    async with EventTap(infra.kafka) as tap:
        await _publish(infra.kafka, *storm)
        last = storm[-1].event_id
        trained = await tap.wait_for(ModelTrained, lambda e: e.causation_id == last, 120)
        await asyncio.sleep(3 * WINDOW_S)  # room for a second training, which must not come
        mine = [e for e in tap.events if isinstance(e, ModelTrained) and e.model_name == trainer]
    assert mine == [trained]
    assert trained.trigger == "data"
    [run] = _runs_answering(infra, trainer, {e.event_id for e in storm})
    assert set(run["flywheel.trigger_ids"].split(",")) >= {e.event_id for e in storm}


async def test_drift_retrains_with_the_drift_event_in_its_lineage(
    infra: Endpoints, trainer: str, tmp_path: Path
) -> None:
    ref = write_batch(generate_customers(800, 1), tmp_path / "b.parquet")
    arrived = DataArrived(producer="it", dataset=ref)
    now = datetime.now(UTC)
    drift = DriftDetected(
        producer="it",
        model_name=trainer,
        reference_version="1",
        window_size=300,
        reference_size=800,
        window_start=now,
        window_end=now,
        features=(
            FeatureDrift(feature="age", statistic=0.3, p_value=1e-9, threshold=0.01, drifted=True),
        ),
    )
    async with EventTap(infra.kafka) as tap:
        await _publish(infra.kafka, arrived)
        await tap.wait_for(ModelTrained, lambda e: e.causation_id == arrived.event_id, 120)
        await _publish(infra.kafka, drift)
        retrained = await tap.wait_for(
            ModelTrained, lambda e: e.causation_id == drift.event_id, 120
        )
    assert (retrained.trigger, retrained.correlation_id) == ("drift", drift.correlation_id)
    run = MlflowClient(infra.mlflow_uri).get_run(retrained.run_id).data.tags
    assert run["flywheel.event_id"] == drift.event_id
    assert run["flywheel.correlation_id"] == drift.correlation_id
    assert run["flywheel.trigger"] == "drift"
    assert run["flywheel.data_version"] == retrained.data_version


async def test_flywheel_retrain_trains_with_trigger_manual(
    infra: Endpoints, trainer: str, tmp_path: Path
) -> None:
    ref = write_batch(generate_customers(600, 5), tmp_path / "b.parquet")
    arrived = DataArrived(producer="it", dataset=ref)
    async with EventTap(infra.kafka) as tap:
        await _publish(infra.kafka, arrived)
        await tap.wait_for(ModelTrained, lambda e: e.causation_id == arrived.event_id, 120)
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["retrain", "--model", trainer, "--reason", "it"]
        )
        assert result.exit_code == 0, result.output
        command = await tap.wait_for(RetrainModel, lambda e: e.model_name == trainer, 60)
        retrained = await tap.wait_for(
            ModelTrained, lambda e: e.causation_id == command.event_id, 120
        )
    assert retrained.trigger == "manual"
    assert command.reason == "it"


async def _dead_letter_of(tap: EventTap, event: Event, within_s: float = 60.0) -> dict[str, str]:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        for letter in tap.dead_letters:
            if event.event_id.encode() in letter.value:
                return letter.headers
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{event.event_id} not dead-lettered within {within_s} s")


async def _trained_by(tap: EventTap, arrival: DataArrived) -> ModelTrained:
    # Not the model's first training: a trainer group of its own reads the topic from the
    # start, and earlier modules' batches that name no model are its default model's too.
    return await tap.wait_for(ModelTrained, lambda e: e.causation_id == arrival.event_id, 120)


async def test_two_models_train_side_by_side_and_a_misfit_batch_is_dead_lettered(
    infra: Endpoints, trainer: str, tmp_path: Path
) -> None:
    fraud = f"it-fraud-{uuid.uuid4().hex[:8]}"
    spec = card_fraud_spec().model_copy(update={"name": fraud})
    await asyncio.to_thread(register_spec, MlflowClient(infra.mlflow_uri), fraud, spec, "it")
    segment_ref = write_batch(generate_customers(600, 3), tmp_path / "segment.parquet")
    fraud_ref = write_batch(generate_transactions(600, 3), tmp_path / "fraud.parquet")
    # The default model's batch announced for the fraud model: columns that do not fit.
    misfit = DataArrived(producer="it", model_name=fraud, dataset=segment_ref)
    segment = DataArrived(producer="it", model_name=trainer, dataset=segment_ref)
    fraud_batch = DataArrived(producer="it", model_name=fraud, dataset=fraud_ref)
    async with EventTap(infra.kafka) as tap:
        await _publish(infra.kafka, misfit, segment, fraud_batch)
        headers = await _dead_letter_of(tap, misfit)
        trained = {
            trainer: await _trained_by(tap, segment),
            fraud: await _trained_by(tap, fraud_batch),
        }
    assert headers["x-error-reason"] == "rejected"
    assert "missing columns ['amount'" in headers["x-error"]
    assert {name: event.model_name for name, event in trained.items()} == {
        trainer: trainer,
        fraud: fraud,
    }
    client = MlflowClient(infra.mlflow_uri)
    for name, event in trained.items():  # each model's runs in its own experiment
        run = client.get_run(event.run_id)
        experiment = client.get_experiment(run.info.experiment_id)
        assert experiment.name == name
