"""A regression model's loop through the trainer's handlers (in-memory broker, fake ports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_diabetes
from test_trainer_handlers import (
    AsyncioLock,
    Clock,
    FakeModelStore,
    InMemoryHistory,
    InMemoryPending,
)

from services.trainer.adapters import FileBatchSource
from services.trainer.coalesce import CoalescePolicy
from services.trainer.core import TrainingConfig, reference_predictions
from services.trainer.handlers import TrainerHandlers, TrainerPorts, register
from services.trainer.metrics import TrainerMetrics
from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec
from shared.datasets import reference_to, write_batch
from shared.events import DataArrived, DatasetRef, Event, ModelTrained, Topic, dead_letter_topic
from shared.spec import FeatureSpec, ModelSpec, load_spec
from shared.testing import RecordingPublisher, consumer_context

MODEL = "diabetes-progression"


def _spec() -> ModelSpec:
    features = load_diabetes(as_frame=True).feature_names
    return ModelSpec(
        name=MODEL,
        label="progression",
        task="regression",
        features=tuple(FeatureSpec(name=str(f), type="numeric") for f in features),
    )


def _diabetes() -> pd.DataFrame:
    """442 patients: ten numeric features and disease progression a year later."""
    frame: pd.DataFrame = load_diabetes(as_frame=True).frame
    return frame.rename(columns={"target": "progression"})


class Loop:
    """The trainer's handlers for one registered regression model, with what they published."""

    def __init__(self) -> None:
        self.broker = KafkaBroker()
        self.publisher, self.store, self.clock = RecordingPublisher(), FakeModelStore(), Clock()
        catalog = ModelCatalog(
            InMemorySpecSource({MODEL: RegisteredSpec(1, _spec())}), "customer-segment", load_spec()
        )
        ports = TrainerPorts(
            FileBatchSource(),
            InMemoryHistory(),
            InMemoryPending(),
            AsyncioLock(),
            self.store,
            self.publisher,
        )
        policy = CoalescePolicy(window_s=1.0, max_wait_s=60, min_rows=1)
        config = TrainingConfig(candidates=("logistic_regression", "torch_mlp"), device="cpu")
        metrics = TrainerMetrics.create(CollectorRegistry())
        self.handlers = TrainerHandlers(ports, catalog, config, 5, metrics, policy, self.clock)
        register(consumer_context("trainer", self.broker), self.handlers)
        self.dead_letters: list[dict[str, str]] = []

        @self.broker.subscriber(dead_letter_topic(Topic.DATA_ARRIVED))
        async def park(message: KafkaMessage) -> None:
            self.dead_letters.append(dict(message.headers))

    async def send(self, *events: Event) -> None:
        async with TestKafkaBroker(self.broker) as test_broker:
            for event in events:
                await test_broker.publish(event.model_dump_json().encode(), event.topic.value)

    async def after_window(self) -> bool:
        self.clock.now += 2.0
        return await self.handlers.train_pending(MODEL)

    def trained(self) -> list[ModelTrained]:
        return [e for e in self.publisher.events if isinstance(e, ModelTrained)]


def _batch(tmp_path: Path, frame: pd.DataFrame, name: str = "diabetes") -> DatasetRef:
    return write_batch(frame, tmp_path / f"{name}.parquet")


async def test_data_arrived_for_a_regression_model_publishes_its_rmse_mae_and_r2(
    tmp_path: Path,
) -> None:
    loop = Loop()
    arrived = DataArrived(producer="test", model_name=MODEL, dataset=_batch(tmp_path, _diabetes()))
    await loop.send(arrived)
    assert await loop.after_window()

    [trained] = loop.trained()
    assert (trained.model_name, trained.causation_id) == (MODEL, arrived.event_id)
    metrics = trained.metrics
    assert metrics.is_regression
    assert (metrics.accuracy, metrics.macro_f1, metrics.log_loss) == (None, None, None)
    truth = _diabetes()["progression"]
    assert 0 < (metrics.mae or 0) <= (metrics.rmse or 0) < 0.85 * float(truth.std())
    assert (metrics.r2 or 0) > 0.3  # the mean scores 0
    assert metrics.validation_rows == 89
    assert trained.algorithm in {"ridge", "torch_mlp"}
    [(model, context)] = loop.store.logged
    assert context.label == "progression"
    assert set(model.candidates) == {"ridge", "torch_mlp"}
    assert model.holdout["progression"].dtype == np.float64
    assert reference_predictions(model)["prediction"].dtype == np.float64


@pytest.mark.parametrize(
    ("bad", "shown", "fmt"), [("high", "'high'", "csv"), (np.inf, "inf", "parquet")]
)
async def test_a_batch_whose_label_is_not_a_number_is_dead_lettered_naming_the_row(
    tmp_path: Path, bad: str | float, shown: str, fmt: str
) -> None:
    loop = Loop()
    frame = _diabetes().astype({"progression": object})
    frame.loc[12, "progression"] = bad
    path = tmp_path / f"bad.{fmt}"
    if fmt == "csv":  # the bad cell makes the whole column text
        frame.to_csv(path, index=False)
    else:
        frame.astype({"progression": float}).to_parquet(path, index=False)
    await loop.send(DataArrived(producer="test", model_name=MODEL, dataset=reference_to(path)))
    assert not await loop.after_window()

    [headers] = loop.dead_letters
    assert headers["x-error-reason"] == "rejected"
    assert (
        f"progression: a regression label must be a finite number; row 12 is {shown}"
        in (headers["x-error"])
    )
    assert loop.trained() == []
