"""The monitor's test fakes: reference and state stores, the in-memory broker run, readers."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import CollectorRegistry

from services.monitor.core import Reference, SavedState
from services.monitor.handlers import MonitorHandlers, register
from services.monitor.metrics import MonitorMetrics
from services.monitor.ports import RoutingState
from services.monitor.service import ModelMonitor, ModelMonitors, MonitorPorts
from services.monitor.settings import Settings
from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec
from shared.events import DriftDetected, Event, PredictionLogged, Topic, dead_letter_topic
from shared.spec import ModelSpec, load_spec
from shared.testing import RecordingPublisher, consumer_context

FEATURES = ("a", "b")
WINDOW = 200
MODEL = Settings().model_name
OTHER = "card-fraud"


class FakeReferences:
    """The default model's references by version; other models' set per model."""

    def __init__(self, *references: Reference) -> None:
        self.by_version = {r.version: r for r in references}
        self.champion = references[0].version if references else None
        self.others: dict[str, Reference | Exception] = {}
        self.specs: dict[str, ModelSpec] = {}
        self.lookups: Counter[str] = Counter()

    def reference(
        self, model_name: str, spec: ModelSpec, version: str | None = None
    ) -> Reference | None:
        self.specs[model_name] = spec
        self.lookups[model_name] += 1
        if model_name != MODEL:
            found = self.others.get(model_name)
            if isinstance(found, Exception):
                raise found
            return found
        return self.by_version.get(version or self.champion or "")


class InMemoryStates:
    """Each model's state, row chunks and pooled windows, through JSON as Redis would."""

    def __init__(self) -> None:
        self.models: dict[str, ModelState] = {}

    def of(self, model_name: str = MODEL) -> ModelState:
        return self.models.setdefault(model_name, ModelState())

    async def load(self, model_name: str) -> SavedState | None:
        return self.of(model_name).load()

    async def clear(self, model_name: str) -> None:
        self.models.pop(model_name, None)

    async def save(
        self,
        model_name: str,
        state: dict[str, Any],
        rows: dict[str, Any] | None,
        restart_rows: bool,
        pooled: list[dict[str, Any]],
        keep_pooled: int,
    ) -> None:
        self.of(model_name).save(state, rows, restart_rows, pooled, keep_pooled)


class ModelState:
    def __init__(self) -> None:
        self.state: str | None = None
        self.rows: list[str] = []
        self.pooled: list[str] = []
        self.saves = 0

    def load(self) -> SavedState | None:
        if self.state is None:
            return None
        rows = [json.loads(r) for r in self.rows]
        return json.loads(self.state), rows, [json.loads(c) for c in self.pooled]

    def save(
        self,
        state: dict[str, Any],
        rows: dict[str, Any] | None,
        restart_rows: bool,
        pooled: list[dict[str, Any]],
        keep_pooled: int,
    ) -> None:
        self.saves += 1
        if restart_rows:
            self.rows = []
        if rows is not None:
            self.rows.append(json.dumps(rows))
        self.pooled = (
            (self.pooled + [json.dumps(c) for c in pooled])[-keep_pooled:]
            if pooled
            else self.pooled
        )
        self.state = json.dumps(state)


def reference_of(version: str = "7", accuracy: float | None = 0.9) -> Reference:
    rng = np.random.default_rng(100)
    columns = {f: rng.normal(size=5000) for f in FEATURES}
    plans = rng.choice(["basic", "pro"], size=5000)
    return Reference.from_columns(version, columns, {"plan": plans}, (), accuracy)


def prediction(rng: np.random.Generator, shift: float, model_name: str = MODEL) -> PredictionLogged:
    plan = "basic" if rng.random() < 0.5 else "pro"
    return PredictionLogged(
        producer="gateway",
        request_id="r",
        model_name=model_name,
        version="1",
        variant="champion",
        features={"a": float(rng.normal(shift)), "b": float(rng.normal()), "plan": plan},
        predicted_class="steady",
        confidence=0.9,
        latency_ms=1.0,
    )


class FakeRouting:
    """The routing table's running experiment, settable by the test."""

    def __init__(self, experiment_id: str | None) -> None:
        self.experiment_id = experiment_id

    async def running_experiment(self, model_name: str) -> str | None:
        return self.experiment_id


class Monitor:
    """The handlers, and what a test reads: each model's detector and the metrics."""

    def __init__(self, handlers: MonitorHandlers, registry: CollectorRegistry) -> None:
        self.handlers, self.registry = handlers, registry
        self.metrics = handlers.models.metrics

    def of(self, model_name: str = MODEL) -> ModelMonitor:
        return self.handlers.models.of(model_name)

    def filled(self, model_name: str = MODEL) -> int | None:
        drift = self.of(model_name).drift
        return None if drift is None else drift.detector.filled

    def sample(self, name: str, model_name: str = MODEL, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {"model_name": model_name, **labels})
        return 0.0 if value is None else value


def catalog(specs: Mapping[str, ModelSpec] | None = None) -> ModelCatalog:
    """The default model and ``OTHER`` with the default spec, and any ``specs`` more."""
    spec = load_spec()
    registered = {OTHER: RegisteredSpec(1, spec)}
    registered.update({name: RegisteredSpec(1, s) for name, s in (specs or {}).items()})
    return ModelCatalog(InMemorySpecSource(registered), MODEL, spec)


def make_monitor(
    references: FakeReferences,
    states: InMemoryStates | None = None,
    routing: RoutingState | None = None,
    clock: Callable[[], float] = time.monotonic,
    specs: Mapping[str, ModelSpec] | None = None,
) -> tuple[Monitor, RecordingPublisher]:
    publisher = RecordingPublisher()
    config = Settings(window_size=WINDOW, cooldown_windows=3).to_config()
    registry = CollectorRegistry()
    ports = MonitorPorts(references, states or InMemoryStates(), publisher, routing)
    metrics = MonitorMetrics.create(registry)
    models = ModelMonitors(ports, catalog(specs), config, metrics, clock)
    return Monitor(MonitorHandlers(models), registry), publisher


async def run_events(
    monitor: Monitor, events: Sequence[Event], batch: int = 50, parked: list[bytes] | None = None
) -> None:
    broker = KafkaBroker()
    register(
        consumer_context("monitor", broker), monitor.handlers, batch_size=500, batch_timeout_ms=1
    )

    @broker.subscriber(dead_letter_topic(Topic.PREDICTION_LOGGED))
    async def dead_letters(message: KafkaMessage) -> None:
        (parked if parked is not None else []).append(message.body)

    async with TestKafkaBroker(broker) as test_broker:
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            if isinstance(chunk[0], PredictionLogged):
                raws = [e.model_dump_json().encode() for e in chunk]
                await test_broker.publish_batch(*raws, topic=Topic.PREDICTION_LOGGED.value)
            else:
                for event in chunk:
                    await test_broker.publish(event.model_dump_json().encode(), event.topic.value)


def drifts_of(publisher: RecordingPublisher) -> list[DriftDetected]:
    return [e for e in publisher.events if isinstance(e, DriftDetected)]
