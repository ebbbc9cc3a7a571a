"""The monitor's handlers through the in-memory broker, with fake reference and state stores."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import CollectorRegistry

from services.monitor.core import Reference
from services.monitor.handlers import DriftMonitor
from services.monitor.metrics import MonitorMetrics
from services.monitor.ports import RoutingState, SavedState
from services.monitor.settings import Settings
from shared.batch_messaging import subscribe_batch
from shared.events import (
    DriftDetected,
    Event,
    FeedbackReceived,
    ModelPromoted,
    PredictionLogged,
    Topic,
    Variant,
    dead_letter_topic,
)
from shared.messaging import subscribe
from shared.testing import RecordingPublisher, consumer_context

FEATURES = ("a", "b")
WINDOW = 200


class FakeReferences:
    def __init__(self, *references: Reference) -> None:
        self.by_version = {r.version: r for r in references}
        self.champion = references[0].version if references else None

    def reference(self, model_name: str, version: str | None = None) -> Reference | None:
        return self.by_version.get(version or self.champion or "")


class InMemoryStates:
    """State, row chunks and pooled windows, copied through JSON as Redis would."""

    def __init__(self) -> None:
        self.state: str | None = None
        self.rows: list[str] = []
        self.pooled: list[str] = []

    async def load(self, model_name: str) -> SavedState | None:
        if self.state is None:
            return None
        rows = [json.loads(r) for r in self.rows]
        return json.loads(self.state), rows, [json.loads(c) for c in self.pooled]

    async def clear(self, model_name: str) -> None:
        self.state, self.rows, self.pooled = None, [], []

    async def save(
        self,
        model_name: str,
        state: dict[str, Any],
        rows: dict[str, Any] | None,
        restart_rows: bool,
        pooled: list[dict[str, Any]],
        keep_pooled: int,
    ) -> None:
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


def _reference(version: str = "7", accuracy: float | None = 0.9) -> Reference:
    rng = np.random.default_rng(100)
    columns = {f: rng.normal(size=5000) for f in FEATURES}
    plans = rng.choice(["basic", "pro"], size=5000)
    return Reference.from_columns(version, columns, {"plan": plans}, (), accuracy)


def _prediction(rng: np.random.Generator, shift: float) -> PredictionLogged:
    plan = "basic" if rng.random() < 0.5 else "pro"
    return PredictionLogged(
        producer="gateway",
        request_id="r",
        model_name=Settings().model_name,
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


def _monitor(
    references: FakeReferences,
    states: InMemoryStates | None = None,
    routing: RoutingState | None = None,
) -> tuple[DriftMonitor, RecordingPublisher]:
    publisher = RecordingPublisher()
    settings = Settings(window_size=WINDOW, cooldown_windows=3)
    metrics = MonitorMetrics.create(CollectorRegistry())
    monitor = DriftMonitor(
        settings, references, publisher, metrics, states or InMemoryStates(), routing
    )
    return monitor, publisher


async def _run(monitor: DriftMonitor, events: Sequence[Event], batch: int = 50) -> None:
    broker = KafkaBroker()
    ctx = consumer_context("monitor", broker)
    subscribe_batch(ctx, Topic.PREDICTION_LOGGED, PredictionLogged, monitor.on_predictions)
    subscribe(ctx, Topic.FEEDBACK_RECEIVED, FeedbackReceived, monitor.on_feedback)
    subscribe(ctx, Topic.MODEL_PROMOTED, ModelPromoted, monitor.on_champion_changed)
    async with TestKafkaBroker(broker) as test_broker:
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            if isinstance(chunk[0], PredictionLogged):
                raws = [e.model_dump_json().encode() for e in chunk]
                await test_broker.publish_batch(*raws, topic=Topic.PREDICTION_LOGGED.value)
            else:
                for event in chunk:
                    await test_broker.publish(event.model_dump_json().encode(), event.topic.value)


def _drifts(publisher: RecordingPublisher) -> list[DriftDetected]:
    return [e for e in publisher.events if isinstance(e, DriftDetected)]


async def test_shifted_traffic_publishes_one_drift_event_naming_the_feature() -> None:
    rng = np.random.default_rng(0)
    monitor, publisher = _monitor(FakeReferences(_reference()))
    predictions = [_prediction(rng, shift=1.0) for _ in range(3 * WINDOW)]
    await _run(monitor, predictions)
    drifts = _drifts(publisher)
    assert len(drifts) == 1
    drift = drifts[0]
    assert drift.reference_version == "7"
    assert drift.causation_id == predictions[WINDOW - 1].event_id
    assert drift.window_correlation_id == predictions[WINDOW - 1].correlation_id
    assert drift.window_start == predictions[0].occurred_at
    assert drift.correlation_id != predictions[WINDOW - 1].correlation_id
    assert {f.feature for f in drift.features if f.drifted} == {"a"}
    assert {f.test for f in drift.features} == {"ks", "chi2"}


async def test_drift_during_a_running_experiment_is_counted_not_published() -> None:
    rng = np.random.default_rng(0)
    routing = FakeRouting("exp-1")
    monitor, publisher = _monitor(FakeReferences(_reference()), routing=routing)
    await _run(monitor, [_prediction(rng, shift=1.0) for _ in range(3 * WINDOW)])
    assert _drifts(publisher) == []
    assert monitor.metrics.drift_suppressed.labels("data")._value.get() == 1
    routing.experiment_id = None  # the experiment concluded; the drift lasts
    await _run(monitor, [_prediction(rng, shift=1.0) for _ in range(5 * WINDOW)])
    assert len(_drifts(publisher)) == 1


async def test_stationary_traffic_publishes_nothing() -> None:
    rng = np.random.default_rng(1)
    monitor, publisher = _monitor(FakeReferences(_reference()))
    await _run(monitor, [_prediction(rng, shift=0.0) for _ in range(5 * WINDOW)])
    assert publisher.events == []
    assert monitor.metrics.observations._value.get() == 5 * WINDOW


async def test_shadow_answers_stay_out_of_the_drift_window() -> None:
    rng = np.random.default_rng(2)
    monitor, publisher = _monitor(FakeReferences(_reference()))
    shifted_shadows = [
        _prediction(rng, shift=1.0).model_copy(update={"shadow": True, "variant": "challenger"})
        for _ in range(3 * WINDOW)
    ]
    await _run(monitor, shifted_shadows)
    assert publisher.events == []
    assert monitor.metrics.observations._value.get() == 0


async def test_no_champion_means_no_drift_and_no_error() -> None:
    monitor, publisher = _monitor(FakeReferences())
    await _run(monitor, [_prediction(np.random.default_rng(1), 5.0) for _ in range(250)])
    assert publisher.events == []


async def test_a_restart_mid_stream_neither_loses_nor_duplicates_the_drift() -> None:
    rng = np.random.default_rng(2)
    stream = [_prediction(rng, shift=0.0) for _ in range(WINDOW)]
    stream += [_prediction(rng, shift=1.0) for _ in range(2 * WINDOW)]
    uninterrupted, expected = _monitor(FakeReferences(_reference()))
    await _run(uninterrupted, stream)
    states = InMemoryStates()
    before, published_before = _monitor(FakeReferences(_reference()), states)
    await _run(before, stream[: WINDOW + 150])
    after, published_after = _monitor(FakeReferences(_reference()), states)
    # The new process sees the last 100 counted events again (offsets not yet committed).
    await _run(after, stream[WINDOW + 50 :])
    assert published_before.events == []
    assert [e.event_id for e in _drifts(published_after)] == [e.event_id for e in _drifts(expected)]
    assert len(_drifts(expected)) == 1


async def test_bad_rows_are_counted_by_reason_and_do_not_break_the_window() -> None:
    rng = np.random.default_rng(3)
    good = [_prediction(rng, 0.0) for _ in range(WINDOW - 1)]
    missing = _prediction(rng, 0.0).model_copy(update={"features": {"a": 1.0}})
    wrong = _prediction(rng, 0.0).model_copy(update={"features": {"a": "x", "b": 1.0, "plan": "p"}})
    monitor, _ = _monitor(FakeReferences(_reference()))
    await _run(monitor, [missing, wrong, *good])
    rejected = monitor.metrics.rejected_rows
    assert rejected.labels("missing_feature")._value.get() == 1
    assert rejected.labels("wrong_type")._value.get() == 1
    assert monitor.detector is not None
    assert monitor.detector.filled == WINDOW - 1


async def test_a_feature_missing_from_the_reference_is_reported_and_the_rest_tested() -> None:
    reference = Reference.from_columns("7", {"a": np.zeros(10)}, None, ("b",))
    monitor, _ = _monitor(FakeReferences(reference))
    await _run(monitor, [_prediction(np.random.default_rng(4), 0.0)])
    assert monitor.metrics.missing_features.labels("b")._value.get() == 1
    assert monitor.metrics.missing_features.labels("a")._value.get() == 0


async def test_promotion_switches_the_reference_to_the_new_champion() -> None:
    states = InMemoryStates()
    monitor, _ = _monitor(FakeReferences(_reference("7"), _reference("8")), states)
    promoted = ModelPromoted(
        producer="router", model_name=monitor.settings.model_name, version="8", reason="won"
    )
    rng = np.random.default_rng(5)
    await _run(monitor, [_prediction(rng, 0.0), promoted, _prediction(rng, 0.0)], batch=1)
    assert monitor.detector is not None
    assert monitor.detector.reference.version == "8"
    # The saved window now belongs to the new reference; version 7's is gone.
    assert states.state is not None
    window = json.loads(states.state)["window"]
    assert (window["version"], window["filled"]) == ("8", 1)
    assert len(states.rows) == 1
    # The accuracy alert compares live accuracy with the champion's own validation accuracy.
    validation = monitor.metrics.validation_accuracy
    assert [s.labels["version"] for f in validation.collect() for s in f.samples] == ["8"]
    assert validation.labels(monitor.settings.model_name, "8")._value.get() == 0.9


def _feedback(correct: bool, variant: Variant = "champion") -> FeedbackReceived:
    return FeedbackReceived(
        producer="gateway",
        request_id="r",
        model_name=Settings().model_name,
        version="3",
        variant=variant,
        predicted_class="steady",
        correct=correct,
    )


@pytest.mark.parametrize(("variant", "expected"), [("champion", 1), ("challenger", 0)])
async def test_an_accuracy_drop_of_the_champion_publishes_one_concept_drift(
    variant: Variant, expected: int
) -> None:
    rng = np.random.default_rng(6)
    monitor, publisher = _monitor(FakeReferences(_reference(accuracy=0.9)))
    healthy = [_feedback(bool(c), variant) for c in rng.random(300) < 0.9]
    degraded = [_feedback(bool(c), variant) for c in rng.random(1500) < 0.6]
    await _run(monitor, [*healthy, *degraded], batch=100)
    drifts = _drifts(publisher)
    assert [(d.kind, d.variant, d.version) for d in drifts] == [
        ("concept", variant, "3")
    ] * expected
    if expected:
        assert drifts[0].features[0].statistic < 0.9
    # A challenger's accuracy is still tracked (the router judges it; dashboards show it).
    accuracy = monitor.metrics.model_accuracy.labels(variant, "3")._value.get()
    assert 0.5 < accuracy < 0.7
    assert monitor.metrics.feedback.labels(variant, "3")._value.get() == 1800


async def test_accuracy_at_the_baseline_publishes_nothing() -> None:
    rng = np.random.default_rng(7)
    monitor, publisher = _monitor(FakeReferences(_reference(accuracy=0.9)))
    await _run(monitor, [_feedback(bool(c)) for c in rng.random(1500) < 0.9], batch=100)
    assert publisher.events == []


class GatedRouting:
    """Holds a drift alarm inside the routing lookup until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def running_experiment(self, model_name: str) -> str | None:
        self.entered.set()
        await self.gate.wait()
        return None


def _promoted(version: str) -> ModelPromoted:
    return ModelPromoted(
        producer="router", model_name=Settings().model_name, version=version, reason="won"
    )


async def test_a_promotion_during_a_batch_saves_a_window_that_restores_unmixed() -> None:
    rng = np.random.default_rng(8)
    states, routing = InMemoryStates(), GatedRouting()
    references = FakeReferences(_reference("7"), _reference("8"))
    monitor, _ = _monitor(references, states, routing)
    # The batch closes a drifted window (its alarm waits at the gate) and leaves 50 rows open.
    drifted = [_prediction(rng, 1.0) for _ in range(WINDOW + 50)]
    counting = asyncio.ensure_future(monitor.on_predictions(drifted))
    await routing.entered.wait()
    switch = asyncio.ensure_future(monitor.on_champion_changed(_promoted("8")))
    await asyncio.wait({switch}, timeout=2.0)  # give the switch every chance to cut in
    routing.gate.set()
    await asyncio.gather(counting, switch)
    await monitor.on_predictions([_prediction(rng, 0.0) for _ in range(10)])
    # A new process restores what was saved: version 8's rows only, nothing discarded.
    references.champion = "8"
    restarted, _ = _monitor(references, states)
    await restarted.on_predictions([_prediction(rng, 0.0) for _ in range(5)])
    assert restarted.detector is not None
    assert (restarted.detector.reference.version, restarted.detector.filled) == ("8", 15)
    assert _discarded(restarted) == 0


def _discarded(monitor: DriftMonitor) -> float:
    families = monitor.metrics.state_discarded.collect()
    return sum(s.value for f in families for s in f.samples if s.name.endswith("_total"))


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [("rows", "inconsistent"), ("document", "unreadable")],
)
async def test_a_saved_state_that_does_not_load_is_discarded_not_dead_lettered(
    corrupt: str, reason: str
) -> None:
    rng = np.random.default_rng(9)
    states = InMemoryStates()
    before, _ = _monitor(FakeReferences(_reference()), states)
    await _run(before, [_prediction(rng, 0.0) for _ in range(120)])
    if corrupt == "rows":
        states.rows = states.rows[:1]  # the state says 120 rows; 50 are left
    else:
        states.state = '{"window": {"version": "7"'
    after, _ = _monitor(FakeReferences(_reference()), states)
    broker = KafkaBroker()
    ctx = consumer_context("monitor", broker)
    parked: list[bytes] = []

    @broker.subscriber(dead_letter_topic(Topic.PREDICTION_LOGGED))
    async def dlq(message: KafkaMessage) -> None:
        parked.append(message.body)

    subscribe_batch(ctx, Topic.PREDICTION_LOGGED, PredictionLogged, after.on_predictions)
    events = [_prediction(rng, 0.0) for _ in range(30)]
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            *(e.model_dump_json().encode() for e in events), topic=Topic.PREDICTION_LOGGED.value
        )
    assert parked == []
    assert after.metrics.state_discarded.labels(reason)._value.get() == 1
    assert after.metrics.observations._value.get() == 30
    # What is saved now is whole again: a third process restores it.
    again, _ = _monitor(FakeReferences(_reference()), states)
    await again.on_predictions([_prediction(rng, 0.0)])
    assert again.detector is not None
    assert again.detector.filled == 31
    assert _discarded(again) == 0
