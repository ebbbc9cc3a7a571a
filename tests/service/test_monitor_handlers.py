"""The monitor's handler through FastStream's in-memory broker, with a fake reference store."""

from __future__ import annotations

import numpy as np
from faststream.kafka import KafkaBroker, TestKafkaBroker
from prometheus_client import CollectorRegistry

from services.monitor.core import Reference
from services.monitor.handlers import DriftMonitor
from services.monitor.metrics import MonitorMetrics
from services.monitor.settings import Settings
from shared.events import DriftDetected, PredictionLogged, Topic
from shared.messaging import subscribe
from shared.testing import RecordingPublisher, consumer_context

FEATURES = ("a", "b")


class FakeReferences:
    def __init__(self, reference: Reference | None) -> None:
        self.reference = reference

    def champion_reference(self, model_name: str) -> Reference | None:
        return self.reference


def _prediction(rng: np.random.Generator, shift: float) -> PredictionLogged:
    return PredictionLogged(
        producer="gateway",
        request_id="r",
        model_name="m",
        version="1",
        variant="champion",
        features={"a": float(rng.normal(shift)), "b": float(rng.normal()), "plan": "basic"},
        predicted_class="steady",
        confidence=0.9,
        latency_ms=1.0,
    )


async def _run(monitor: DriftMonitor, predictions: list[PredictionLogged]) -> None:
    broker = KafkaBroker()
    subscribe(
        consumer_context("monitor", broker),
        Topic.PREDICTION_LOGGED,
        PredictionLogged,
        monitor.on_prediction,
    )
    async with TestKafkaBroker(broker) as test_broker:
        for event in predictions:
            await test_broker.publish(
                event.model_dump_json().encode(), Topic.PREDICTION_LOGGED.value
            )


def _monitor(reference: Reference | None) -> tuple[DriftMonitor, RecordingPublisher]:
    publisher = RecordingPublisher()
    settings = Settings(window_size=200, model_name="m")
    metrics = MonitorMetrics.create(CollectorRegistry())
    return DriftMonitor(settings, FakeReferences(reference), publisher, metrics), publisher


async def test_shifted_traffic_publishes_one_drift_event_naming_the_feature() -> None:
    rng = np.random.default_rng(0)
    reference = Reference.from_columns("7", {f: rng.normal(size=5000) for f in FEATURES})
    monitor, publisher = _monitor(reference)
    predictions = [_prediction(rng, shift=1.0) for _ in range(400)]
    await _run(monitor, predictions)
    drifts = publisher.of_type(DriftDetected)
    assert len(drifts) == 1
    drift = drifts[0]
    assert isinstance(drift, DriftDetected)
    assert drift.reference_version == "7"
    assert drift.causation_id == predictions[199].event_id
    assert drift.correlation_id != predictions[199].correlation_id
    assert {f.feature for f in drift.features if f.drifted} == {"a"}


async def test_no_champion_means_no_drift_and_no_error() -> None:
    monitor, publisher = _monitor(None)
    await _run(monitor, [_prediction(np.random.default_rng(1), 5.0) for _ in range(250)])
    assert publisher.events == []
