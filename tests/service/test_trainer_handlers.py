"""Trainer handlers through FastStream's in-memory broker, with fakes of its ports."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import CollectorRegistry

from flywheel.demo_models import card_fraud_spec, generate_transactions
from services.trainer.adapters import FileBatchSource
from services.trainer.coalesce import CoalescePolicy, PendingArrival
from services.trainer.core import TrainedModel, TrainingConfig, data_version
from services.trainer.handlers import TrainerHandlers, TrainerPorts, register
from services.trainer.metrics import TrainerMetrics
from services.trainer.ports import RunContext
from services.trainer.scheduler import PendingTrainingScheduler
from services.trainer.settings import Settings
from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec
from shared.datasets import generate_customers, write_batch
from shared.errors import DependencyUnavailableError
from shared.events import (
    DataArrived,
    DatasetRef,
    DriftDetected,
    Event,
    FeatureDrift,
    ModelRegistered,
    ModelRejected,
    ModelTrained,
    RetrainModel,
    Topic,
    dead_letter_topic,
)
from shared.spec import load_spec
from shared.testing import RecordingPublisher, consumer_context

MODEL = "customer-segment"
"""The deployment's default model: configured, not registered (data-arrived may omit it)."""
FRAUD = "card-fraud"
"""A registered model with another spec (other features, label and classes)."""
WINDOW_S = 2.0


class InMemoryHistory:
    """Batch history in a dict of lists, newest last, one entry per content hash."""

    def __init__(self) -> None:
        self.refs: dict[str, list[DatasetRef]] = {}

    async def record(self, model_name: str, ref: DatasetRef) -> bool:
        refs = [r for r in self.refs.get(model_name, []) if r.sha256 != ref.sha256]
        new = len(refs) == len(self.refs.get(model_name, []))
        self.refs[model_name] = [*refs, ref]
        return new

    async def recent(self, model_name: str, count: int) -> list[DatasetRef]:
        return self.refs.get(model_name, [])[-count:]


class InMemoryPending:
    """Pending arrivals in a dict of lists."""

    def __init__(self) -> None:
        self.items: dict[str, list[PendingArrival]] = {}

    async def add(self, model_name: str, arrival: PendingArrival) -> None:
        self.items.setdefault(model_name, []).append(arrival)

    async def waiting(self, model_name: str) -> list[PendingArrival]:
        return list(self.items.get(model_name, []))

    async def remove(self, model_name: str, arrivals: list[PendingArrival]) -> None:
        gone = {a.event.event_id for a in arrivals}
        kept = [a for a in self.items.get(model_name, []) if a.event.event_id not in gone]
        self.items[model_name] = kept


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class AsyncioLock:
    """A per-model asyncio lock standing in for the Redis lock."""

    def __init__(self) -> None:
        self.locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, model_name: str) -> AsyncIterator[None]:
        async with self.locks.setdefault(model_name, asyncio.Lock()):
            yield


@dataclass
class FakeModelStore:
    """Records logged trainings and how many overlapped; can be slow or fail, per model."""

    delay_s: float = 0.0
    failure: Exception | None = None
    logged: list[tuple[TrainedModel, RunContext]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    delays: dict[str, float] = field(default_factory=dict)
    failures: dict[str, Exception] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def log_training(self, model: TrainedModel, context: RunContext) -> str:
        with self._guard:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.delays.get(context.model_name, self.delay_s))
        failure = self.failures.get(context.model_name, self.failure)
        if failure is not None:
            with self._guard:
                self.active -= 1
            raise failure
        with self._guard:
            self.active -= 1
            self.logged.append((model, context))
            return f"run-{len(self.logged)}"


@dataclass
class Harness:
    broker: KafkaBroker
    handlers: TrainerHandlers
    history: InMemoryHistory
    pending: InMemoryPending
    clock: Clock
    store: FakeModelStore
    publisher: RecordingPublisher
    registry: CollectorRegistry
    dead_letters: dict[str, list[dict[str, str]]]

    def trained(self, model: str | None = None) -> list[ModelTrained]:
        found = [e for e in self.publisher.events if isinstance(e, ModelTrained)]
        return [e for e in found if model is None or e.model_name == model]

    def rejected(self, model: str | None = None) -> list[ModelRejected]:
        found = [e for e in self.publisher.events if isinstance(e, ModelRejected)]
        return [e for e in found if model is None or e.model_name == model]

    async def after_window(self, model: str = MODEL) -> bool:
        self.clock.now += WINDOW_S
        return await self.handlers.train_pending(model)

    def count(self, metric: str, model: str = MODEL, **labels: str) -> float:
        """A trainer metric's sample for ``model`` (0 when never counted)."""
        value = self.registry.get_sample_value(metric, {"model_name": model, **labels})
        return value or 0.0


def _harness(window: int = 5, delay_s: float = 0.0, min_rows: int = 1, older: int = 0) -> Harness:
    broker = KafkaBroker()
    publisher, history, store = RecordingPublisher(), InMemoryHistory(), FakeModelStore(delay_s)
    pending, clock, registry = InMemoryPending(), Clock(), CollectorRegistry()
    metrics = TrainerMetrics.create(registry)
    registered = InMemorySpecSource({FRAUD: RegisteredSpec(1, card_fraud_spec())})
    catalog = ModelCatalog(registered, MODEL, load_spec())
    ports = TrainerPorts(FileBatchSource(), history, pending, AsyncioLock(), store, publisher)
    policy = CoalescePolicy(window_s=WINDOW_S, max_wait_s=60, min_rows=min_rows)
    config = TrainingConfig(older_fraction=0.5)
    handlers = TrainerHandlers(ports, catalog, config, window, metrics, policy, clock, older)
    register(consumer_context("trainer", broker), handlers)
    dead: dict[str, list[dict[str, str]]] = {}

    @broker.subscriber(
        dead_letter_topic(Topic.DATA_ARRIVED),
        dead_letter_topic(Topic.DRIFT_DETECTED),
        dead_letter_topic(Topic.RETRAIN_MODEL),
    )
    async def park(message: KafkaMessage) -> None:
        headers = dict(message.headers)
        dead.setdefault(headers["x-original-topic"], []).append(headers)

    return Harness(broker, handlers, history, pending, clock, store, publisher, registry, dead)


def _batch(tmp_path: Path, seed: int, rows: int = 600) -> DatasetRef:
    return write_batch(generate_customers(rows, seed), tmp_path / f"batch-{seed}.parquet")


def _fraud_batch(tmp_path: Path, seed: int, rows: int = 600) -> DatasetRef:
    frame = generate_transactions(rows, seed)
    return write_batch(frame, tmp_path / f"fraud-{seed}.parquet")


def _path(ref: DatasetRef) -> Path:
    return Path(ref.uri.removeprefix("file://"))


def _damaged_batch(tmp_path: Path, damage: str) -> DatasetRef:
    ref = _batch(tmp_path, 1)
    path = _path(ref)
    if damage == "missing":
        path.unlink()
    elif damage == "tampered":
        path.write_bytes(path.read_bytes() + b"x")
    else:  # a real file whose hash matches, but a column is missing
        ref = write_batch(generate_customers(50, 1).drop(columns=["plan"]), path)
    return ref


def _drift(model: str = MODEL) -> DriftDetected:
    now = datetime.now(UTC)
    feature = FeatureDrift(
        feature="monthly_spend", statistic=0.4, p_value=1e-6, threshold=0.01, drifted=True
    )
    return DriftDetected(
        producer="monitor",
        model_name=model,
        reference_version="1",
        window_size=500,
        reference_size=1000,
        window_start=now,
        window_end=now,
        features=(feature,),
    )


async def _send(broker: KafkaBroker, *events: Event) -> None:
    async with TestKafkaBroker(broker) as test_broker:
        for event in events:
            await test_broker.publish(event.model_dump_json().encode(), event.topic.value)


async def test_data_arrival_trains_once_its_window_is_quiet(tmp_path: Path) -> None:
    h = _harness()
    arrived = DataArrived(producer="test", dataset=_batch(tmp_path, 1))
    await _send(h.broker, arrived)
    assert h.trained() == []
    assert not await h.handlers.train_pending(MODEL)  # the window is still open

    assert await h.after_window()
    [trained] = h.trained()
    assert trained.correlation_id == arrived.correlation_id
    assert trained.causation_id == arrived.event_id
    assert trained.producer == "trainer"
    assert trained.trigger == "data"
    assert trained.model_uri == "runs:/run-1/model"
    assert trained.datasets == (arrived.dataset,)
    assert trained.data_version == data_version([arrived.dataset.sha256])
    assert (trained.metrics.accuracy or 0.0) > 0.6
    assert trained.metrics.validation_rows == 120
    _, context = h.store.logged[0]
    assert (context.event_id, context.trigger) == (arrived.event_id, "data")
    assert h.pending.items[MODEL] == []
    assert not await h.after_window()  # nothing left to train on
    assert h.count("flywheel_trainer_trainings_total", trigger="data", outcome="succeeded") == 1


async def test_a_storm_of_twenty_arrivals_is_one_training(tmp_path: Path) -> None:
    h = _harness(window=20)
    storm = [DataArrived(producer="test", dataset=_batch(tmp_path, s, 100)) for s in range(20)]
    await _send(h.broker, *storm)
    assert await h.after_window()
    assert not await h.after_window()

    [trained] = h.trained()
    assert trained.causation_id == storm[-1].event_id
    assert len(trained.datasets) == 20
    _, context = h.store.logged[0]
    assert set(context.trigger_ids) == {e.event_id for e in storm}
    assert h.count("flywheel_trainer_coalesced_triggers_total") == 19
    assert h.count("flywheel_trainer_triggers_total", trigger="data", outcome="accepted") == 20


async def test_a_batch_announced_twice_is_a_counted_no_op(tmp_path: Path) -> None:
    h = _harness()
    ref = _batch(tmp_path, 1)
    await _send(h.broker, DataArrived(producer="a", dataset=ref))
    await _send(h.broker, DataArrived(producer="b", dataset=ref))
    assert len(h.pending.items[MODEL]) == 1
    assert h.count("flywheel_trainer_triggers_total", trigger="data", outcome="duplicate") == 1
    assert await h.after_window()
    assert len(h.trained()) == 1


async def test_too_few_new_rows_keep_waiting_for_more(tmp_path: Path) -> None:
    h = _harness(min_rows=1000)
    await _send(h.broker, DataArrived(producer="t", dataset=_batch(tmp_path, 1, 600)))
    assert not await h.after_window()
    await _send(h.broker, DataArrived(producer="t", dataset=_batch(tmp_path, 2, 600)))
    assert await h.after_window()
    assert len(h.trained()[0].datasets) == 2


async def test_training_uses_only_the_most_recent_window(tmp_path: Path) -> None:
    h = _harness(window=2)
    events = [DataArrived(producer="test", dataset=_batch(tmp_path, s)) for s in (1, 2, 3)]
    await _send(h.broker, *events)
    assert await h.after_window()

    last = h.trained()[-1]
    assert last.datasets == (events[1].dataset, events[2].dataset)
    assert last.data_version == data_version([events[2].dataset.sha256, events[1].dataset.sha256])
    assert h.store.logged[-1][0].metrics.validation_rows == 240


async def test_drift_retrains_at_once_in_the_drift_turn(tmp_path: Path) -> None:
    h = _harness()
    batches = [DataArrived(producer="test", dataset=_batch(tmp_path, s)) for s in (1, 2)]
    drift = _drift()
    await _send(h.broker, *batches, drift)

    [retrained] = h.trained()
    assert retrained.trigger == "drift"
    assert retrained.correlation_id == drift.correlation_id
    assert retrained.causation_id == drift.event_id
    assert retrained.datasets == tuple(b.dataset for b in batches)
    assert h.store.logged[0][1].trigger_ids[0] == drift.event_id
    assert not await h.after_window()  # the drift training covered the pending arrivals
    assert h.count("flywheel_trainer_trainings_total", trigger="drift", outcome="succeeded") == 1


async def test_retrain_command_trains_with_trigger_manual(tmp_path: Path) -> None:
    h = _harness()
    await h.history.record(MODEL, _batch(tmp_path, 1))
    command = RetrainModel(producer="cli", model_name=MODEL, reason="new labels")
    await _send(h.broker, command, RetrainModel(producer="cli", model_name="other"))
    [trained] = h.trained()
    assert (trained.trigger, trained.causation_id) == ("manual", command.event_id)
    assert h.count("flywheel_trainer_triggers_total", trigger="manual", outcome="accepted") == 1
    [headers] = h.dead_letters[Topic.RETRAIN_MODEL.value]  # "other" is no registered model
    assert "unknown model 'other'" in headers["x-error"]


async def test_a_failed_training_is_rejected_with_its_cause(tmp_path: Path) -> None:
    h = _harness()
    h.store.failure = FloatingPointError("loss is NaN at epoch 3")
    await _send(h.broker, DataArrived(producer="t", dataset=_batch(tmp_path, 1)))
    assert await h.after_window()
    [rejected] = h.rejected()
    [reason] = rejected.reasons
    assert reason.name == "training"
    assert "NaN" in reason.detail
    assert h.trained() == []
    assert h.count("flywheel_trainer_trainings_total", trigger="data", outcome="failed") == 1


async def test_an_mlflow_outage_keeps_the_arrivals_pending(tmp_path: Path) -> None:
    h = _harness()
    h.store.failure = DependencyUnavailableError("MLflow unreachable")
    await _send(h.broker, DataArrived(producer="t", dataset=_batch(tmp_path, 1)))
    with pytest.raises(DependencyUnavailableError):
        await h.after_window()
    assert len(h.pending.items[MODEL]) == 1
    assert h.publisher.events == []
    h.store.failure = None
    assert await h.after_window()
    assert len(h.trained()) == 1


async def test_an_mlflow_outage_during_drift_rewinds_instead_of_dead_lettering(
    tmp_path: Path,
) -> None:
    h = _harness()
    await h.history.record(MODEL, _batch(tmp_path, 1))
    h.store.failure = DependencyUnavailableError("MLflow unreachable")
    with pytest.raises(DependencyUnavailableError):
        await h.handlers.on_drift_detected(_drift())
    assert h.publisher.events == []
    assert h.count("flywheel_trainer_trainings_total", trigger="drift", outcome="deferred") == 1


@pytest.mark.parametrize("damage", ["missing", "tampered", "misfit"])
async def test_bad_batch_is_dead_lettered_without_training(tmp_path: Path, damage: str) -> None:
    h = _harness()
    ref = _damaged_batch(tmp_path, damage)
    await _send(h.broker, DataArrived(producer="test", dataset=ref))

    [headers] = h.dead_letters[Topic.DATA_ARRIVED.value]
    assert headers["x-error-reason"] == "rejected"
    assert not await h.after_window()
    assert h.store.logged == []
    assert h.history.refs == {}


async def test_drift_before_any_data_is_dead_lettered(tmp_path: Path) -> None:
    h = _harness()
    await _send(h.broker, _drift())
    [headers] = h.dead_letters[Topic.DRIFT_DETECTED.value]
    assert "NotFoundError" in headers["x-error"]
    assert h.trained() == []


async def test_an_older_batch_that_vanished_is_skipped(tmp_path: Path) -> None:
    h = _harness()
    first, second = _batch(tmp_path, 1), _batch(tmp_path, 2)
    await h.history.record(MODEL, first)
    await h.history.record(MODEL, second)
    _path(first).unlink()
    await _send(h.broker, _drift())
    assert h.trained()[-1].datasets == (second,)


async def test_two_triggers_never_train_the_same_model_at_once(tmp_path: Path) -> None:
    h = _harness(delay_s=0.3)
    await h.history.record(MODEL, _batch(tmp_path, 1))
    await h.handlers.on_data_arrived(DataArrived(producer="test", dataset=_batch(tmp_path, 2)))
    h.clock.now += WINDOW_S
    command = RetrainModel(producer="cli", model_name=MODEL)
    await asyncio.gather(
        h.handlers.train_pending(MODEL),
        h.handlers.on_drift_detected(_drift()),
        h.handlers.on_retrain_requested(command),
    )
    assert 2 <= len(h.store.logged) <= 3
    assert h.store.max_active == 1


async def test_the_schedule_retrains_with_trigger_schedule(tmp_path: Path) -> None:
    h = _harness()
    await h.history.record(MODEL, _batch(tmp_path, 1))
    tick = await h.handlers.on_schedule(MODEL)
    [trained] = h.trained()
    assert (trained.trigger, trained.causation_id) == ("schedule", tick.event_id)


async def test_the_scheduler_runs_pending_and_scheduled_trainings(tmp_path: Path) -> None:
    h = _harness()
    await h.handlers.on_data_arrived(DataArrived(producer="t", dataset=_batch(tmp_path, 1)))
    h.clock.now += WINDOW_S
    scheduler = PendingTrainingScheduler(h.handlers, tick_s=0.01, every_s=0.05)
    await scheduler.start()
    for _ in range(500):
        if {t.trigger for t in h.trained()} >= {"data", "schedule"}:
            break
        await asyncio.sleep(0.01)
    await scheduler.stop()
    assert {t.trigger for t in h.trained()} >= {"data", "schedule"}


async def test_older_batches_join_the_window_as_a_recorded_sample(tmp_path: Path) -> None:
    h = _harness(window=2, older=3)
    events = [DataArrived(producer="t", dataset=_batch(tmp_path, s)) for s in (1, 2, 3, 4)]
    await _send(h.broker, *events)
    assert await h.after_window()

    [trained] = h.trained()
    model, context = h.store.logged[0]
    assert context.datasets == (events[2].dataset, events[3].dataset)
    assert context.sampled == (events[0].dataset, events[1].dataset)
    assert trained.datasets == tuple(e.dataset for e in events)
    assert model.metrics.validation_rows == 360  # (2 × 600 + 50 % of 2 × 600) × 20 %
    assert trained.data_version != data_version(e.dataset.sha256 for e in events)


async def test_a_rows_count_that_disagrees_with_the_file_is_dead_lettered(
    tmp_path: Path,
) -> None:
    h = _harness()
    ref = _batch(tmp_path, 1, 600)
    await _send(h.broker, DataArrived(producer="a", dataset=ref))
    # The same file announced again with another row count: not new data, a wrong event.
    await _send(h.broker, DataArrived(producer="b", dataset=ref.model_copy(update={"rows": 700})))

    [headers] = h.dead_letters[Topic.DATA_ARRIVED.value]
    assert headers["x-error-reason"] == "rejected"
    assert "600 rows" in headers["x-error"]
    assert "700" in headers["x-error"]
    assert await h.after_window()
    assert len(h.trained()) == 1
    assert h.history.refs[MODEL] == [ref]


async def test_the_same_content_under_another_name_trains_once(tmp_path: Path) -> None:
    h = _harness()
    ref = _batch(tmp_path, 1)
    copy = tmp_path / "copy-of-batch-1.parquet"
    copy.write_bytes(_path(ref).read_bytes())
    again = ref.model_copy(update={"uri": copy.as_uri()})
    await _send(h.broker, DataArrived(producer="a", dataset=ref))
    assert await h.after_window()
    await _send(h.broker, DataArrived(producer="b", dataset=again))
    assert not await h.after_window()
    assert len(h.trained()) == 1
    assert h.count("flywheel_trainer_triggers_total", trigger="data", outcome="duplicate") == 1


async def test_a_small_batch_is_recorded_and_counts_towards_the_next_training(
    tmp_path: Path,
) -> None:
    default = Settings.model_fields["min_new_rows"].default
    h = _harness(min_rows=default)
    small = DataArrived(producer="t", dataset=_batch(tmp_path, 1, 3))
    await _send(h.broker, small)
    h.clock.now += 3600  # however long it waits, three rows alone do not retrain
    assert not await h.handlers.train_pending(MODEL)
    assert h.history.refs[MODEL] == [small.dataset]

    big = DataArrived(producer="t", dataset=_batch(tmp_path, 2, default))
    await _send(h.broker, big)
    assert await h.after_window()
    [trained] = h.trained()
    assert trained.datasets == (small.dataset, big.dataset)
    _, context = h.store.logged[0]
    assert set(context.trigger_ids) == {small.event_id, big.event_id}


async def test_each_model_trains_on_its_own_batches_with_its_own_spec(tmp_path: Path) -> None:
    h = _harness()
    segment = DataArrived(producer="t", dataset=_batch(tmp_path, 1))  # no model: the default
    fraud = DataArrived(producer="t", model_name=FRAUD, dataset=_fraud_batch(tmp_path, 1))
    await _send(h.broker, segment, fraud)
    assert h.history.refs == {MODEL: [segment.dataset], FRAUD: [fraud.dataset]}

    assert await h.after_window(MODEL)
    assert await h.after_window(FRAUD)
    [trained_segment], [trained_fraud] = h.trained(MODEL), h.trained(FRAUD)
    assert trained_segment.datasets == (segment.dataset,)
    assert trained_fraud.datasets == (fraud.dataset,)
    assert trained_fraud.causation_id == fraud.event_id
    contexts = {context.model_name: context for _, context in h.store.logged}
    assert (contexts[MODEL].label, contexts[FRAUD].label) == ("segment", "outcome")
    models = {context.model_name: model for model, context in h.store.logged}
    assert list(models[FRAUD].pipeline.classes_) == ["fraud", "legit"]
    for model in (MODEL, FRAUD):
        labels = {"trigger": "data", "outcome": "succeeded"}
        assert h.count("flywheel_trainer_trainings_total", model, **labels) == 1


async def test_an_event_for_an_unregistered_model_is_dead_lettered_naming_the_known_ones(
    tmp_path: Path,
) -> None:
    h = _harness()
    unknown = DataArrived(producer="t", model_name="churn", dataset=_batch(tmp_path, 1))
    await _send(h.broker, unknown, _drift("churn"))
    for topic in (Topic.DATA_ARRIVED, Topic.DRIFT_DETECTED):
        [headers] = h.dead_letters[topic.value]
        assert headers["x-error-reason"] == "rejected"
        assert f"unknown model 'churn'; registered models: {FRAUD}, {MODEL}" in headers["x-error"]
    assert h.history.refs == {}
    assert h.store.logged == []


async def test_a_batch_announced_for_the_wrong_model_names_the_misfit_columns(
    tmp_path: Path,
) -> None:
    h = _harness()
    customers = _batch(tmp_path, 1)
    await _send(h.broker, DataArrived(producer="t", model_name=FRAUD, dataset=customers))
    [headers] = h.dead_letters[Topic.DATA_ARRIVED.value]
    assert headers["x-error-reason"] == "rejected"
    error = headers["x-error"]
    assert f"batch for model '{FRAUD}'" in error
    assert "missing columns ['amount', 'hour'" in error
    assert "columns the spec does not know: ['age', 'tenure_months'" in error
    assert h.history.refs == {}


async def test_too_few_rows_of_one_model_do_not_hold_up_another(tmp_path: Path) -> None:
    h = _harness(min_rows=1000)
    await _send(
        h.broker,
        DataArrived(producer="t", dataset=_batch(tmp_path, 1, 600)),
        DataArrived(producer="t", model_name=FRAUD, dataset=_fraud_batch(tmp_path, 1, 1200)),
    )
    assert not await h.after_window(MODEL)
    assert await h.after_window(FRAUD)
    assert [t.model_name for t in h.trained()] == [FRAUD]
    assert len(h.pending.items[MODEL]) == 1


async def test_one_models_bad_data_fails_its_training_and_the_other_model_still_trains(
    tmp_path: Path,
) -> None:
    h = _harness()
    one_class = generate_customers(600, 1).assign(segment="steady")  # nothing to learn from
    bad = write_batch(one_class, tmp_path / "one-class.parquet")
    await _send(
        h.broker,
        DataArrived(producer="t", dataset=bad),
        DataArrived(producer="t", model_name=FRAUD, dataset=_fraud_batch(tmp_path, 1)),
    )
    h.clock.now += WINDOW_S
    assert await h.handlers.train_pending(MODEL)
    assert await h.handlers.train_pending(FRAUD)

    [rejected] = h.rejected(MODEL)
    assert "only one class" in rejected.reasons[0].detail
    [trained] = h.trained(FRAUD)
    assert trained.trigger == "data"
    assert h.rejected(FRAUD) == []
    failed = {"trigger": "data", "outcome": "failed"}
    assert h.count("flywheel_trainer_trainings_total", MODEL, **failed) == 1
    assert h.count("flywheel_trainer_trainings_total", FRAUD, **failed) == 0


async def test_a_slow_failing_training_of_one_model_never_delays_another(tmp_path: Path) -> None:
    h = _harness()
    # The fraud model's turn comes first (models are polled in name order): were turns
    # taken one after the other, the segment model would wait for its slow failure.
    h.store.delays[FRAUD] = 1.5
    h.store.failures[FRAUD] = MemoryError("out of memory")
    fraud = DataArrived(producer="t", model_name=FRAUD, dataset=_fraud_batch(tmp_path, 1))
    await h.handlers.on_data_arrived(fraud)
    segment = DataArrived(producer="t", dataset=_batch(tmp_path, 1))
    await h.handlers.on_data_arrived(segment)
    h.clock.now += WINDOW_S
    scheduler = PendingTrainingScheduler(h.handlers, tick_s=0.01)
    await scheduler.start()
    for _ in range(300):
        if h.rejected(FRAUD):
            break
        await asyncio.sleep(0.01)
    await scheduler.stop()

    assert scheduler.models() == [FRAUD, MODEL]
    # The segment model was trained and published while the fraud model's training ran.
    outcomes = [e for e in h.publisher.events if isinstance(e, ModelTrained | ModelRejected)]
    assert [(type(e).__name__, e.model_name) for e in outcomes] == [
        ("ModelTrained", MODEL),
        ("ModelRejected", FRAUD),
    ]
    assert len(outcomes) == len(h.publisher.events)
    assert h.trained(MODEL)[0].causation_id == segment.event_id
    assert "out of memory" in h.rejected(FRAUD)[0].reasons[0].detail


async def test_a_model_registered_later_is_trained_with_the_spec_its_event_carries(
    tmp_path: Path,
) -> None:
    h = _harness()
    batch = DataArrived(producer="t", model_name="fraud-eu", dataset=_fraud_batch(tmp_path, 1))
    await _send(h.broker, batch)  # not registered yet: dead-lettered
    assert len(h.dead_letters[Topic.DATA_ARRIVED.value]) == 1

    spec = card_fraud_spec().model_copy(update={"name": "fraud-eu"})
    registered = ModelRegistered(
        producer="registry", model_name="fraud-eu", spec_revision=1, spec=spec
    )
    again = DataArrived(producer="t", model_name="fraud-eu", dataset=batch.dataset)
    await _send(h.broker, registered, again)
    assert await h.after_window("fraud-eu")
    [trained] = h.trained("fraud-eu")
    assert trained.causation_id == again.event_id
    assert len(h.dead_letters[Topic.DATA_ARRIVED.value]) == 1


async def test_the_schedule_retrains_every_known_model(tmp_path: Path) -> None:
    h = _harness()
    await h.history.record(MODEL, _batch(tmp_path, 1))
    await h.history.record(FRAUD, _fraud_batch(tmp_path, 1))
    scheduler = PendingTrainingScheduler(h.handlers, tick_s=0.01, every_s=0.05)
    await scheduler.start()
    for _ in range(500):
        if {t.model_name for t in h.trained()} == {MODEL, FRAUD}:
            break
        await asyncio.sleep(0.01)
    await scheduler.stop()
    assert {(t.model_name, t.trigger) for t in h.trained()} >= {
        (MODEL, "schedule"),
        (FRAUD, "schedule"),
    }
    assert scheduler.models() == [FRAUD, MODEL]


async def test_drift_of_one_model_retrains_that_model_only(tmp_path: Path) -> None:
    h = _harness()
    await h.history.record(MODEL, _batch(tmp_path, 1))
    await h.history.record(FRAUD, _fraud_batch(tmp_path, 1))
    drift = _drift(FRAUD)
    await _send(h.broker, drift)
    [retrained] = h.trained()
    assert (retrained.model_name, retrained.trigger) == (FRAUD, "drift")
    assert h.store.logged[0][1].label == "outcome"
