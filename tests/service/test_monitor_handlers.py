"""The monitor's handlers through the in-memory broker, with fake reference and state stores."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from _monitor_fakes import (
    MODEL,
    OTHER,
    WINDOW,
    FakeReferences,
    FakeRouting,
    InMemoryStates,
    Monitor,
    drifts_of,
    make_monitor,
    prediction,
    reference_of,
    run_events,
)

from services.monitor.core import Reference
from services.monitor.settings import Settings
from shared.events import (
    FeedbackReceived,
    ModelPromoted,
    ModelRegistered,
    PredictionLogged,
    Variant,
)
from shared.spec import load_spec


async def test_shifted_traffic_publishes_one_drift_event_naming_the_feature() -> None:
    rng = np.random.default_rng(0)
    monitor, publisher = make_monitor(FakeReferences(reference_of()))
    predictions = [prediction(rng, shift=1.0) for _ in range(3 * WINDOW)]
    await run_events(monitor, predictions)
    drifts = drifts_of(publisher)
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
    monitor, publisher = make_monitor(FakeReferences(reference_of()), routing=routing)
    await run_events(monitor, [prediction(rng, shift=1.0) for _ in range(3 * WINDOW)])
    assert drifts_of(publisher) == []
    assert monitor.sample("ml_drift_suppressed_total", kind="data") == 1
    routing.experiment_id = None  # the experiment concluded; the drift lasts
    await run_events(monitor, [prediction(rng, shift=1.0) for _ in range(5 * WINDOW)])
    assert len(drifts_of(publisher)) == 1


async def test_stationary_traffic_publishes_nothing() -> None:
    rng = np.random.default_rng(1)
    monitor, publisher = make_monitor(FakeReferences(reference_of()))
    await run_events(monitor, [prediction(rng, shift=0.0) for _ in range(5 * WINDOW)])
    assert publisher.events == []
    assert monitor.sample("monitor_observations_total") == 5 * WINDOW


async def test_shadow_answers_stay_out_of_the_drift_window() -> None:
    rng = np.random.default_rng(2)
    monitor, publisher = make_monitor(FakeReferences(reference_of()))
    shifted_shadows = [
        prediction(rng, shift=1.0).model_copy(update={"shadow": True, "variant": "challenger"})
        for _ in range(3 * WINDOW)
    ]
    await run_events(monitor, shifted_shadows)
    assert publisher.events == []
    assert monitor.sample("monitor_observations_total") == 0


async def test_no_champion_means_no_drift_and_no_error() -> None:
    monitor, publisher = make_monitor(FakeReferences())
    await run_events(monitor, [prediction(np.random.default_rng(1), 5.0) for _ in range(250)])
    assert publisher.events == []


async def test_a_restart_mid_stream_neither_loses_nor_duplicates_the_drift() -> None:
    rng = np.random.default_rng(2)
    stream = [prediction(rng, shift=0.0) for _ in range(WINDOW)]
    stream += [prediction(rng, shift=1.0) for _ in range(2 * WINDOW)]
    uninterrupted, expected = make_monitor(FakeReferences(reference_of()))
    await run_events(uninterrupted, stream)
    states = InMemoryStates()
    before, published_before = make_monitor(FakeReferences(reference_of()), states)
    await run_events(before, stream[: WINDOW + 150])
    after, published_after = make_monitor(FakeReferences(reference_of()), states)
    # The new process sees the last 100 counted events again (offsets not yet committed).
    await run_events(after, stream[WINDOW + 50 :])
    assert published_before.events == []
    assert [e.event_id for e in drifts_of(published_after)] == [
        e.event_id for e in drifts_of(expected)
    ]
    assert len(drifts_of(expected)) == 1


async def test_bad_rows_are_counted_by_reason_and_do_not_break_the_window() -> None:
    rng = np.random.default_rng(3)
    good = [prediction(rng, 0.0) for _ in range(WINDOW - 1)]
    missing = prediction(rng, 0.0).model_copy(update={"features": {"a": 1.0}})
    wrong = prediction(rng, 0.0).model_copy(update={"features": {"a": "x", "b": 1.0, "plan": "p"}})
    monitor, _ = make_monitor(FakeReferences(reference_of()))
    await run_events(monitor, [missing, wrong, *good])
    rejected = "monitor_rejected_rows_total"
    assert monitor.sample(rejected, reason="missing_feature") == 1
    assert monitor.sample(rejected, reason="wrong_type") == 1
    assert monitor.filled() == WINDOW - 1


async def test_a_feature_missing_from_the_reference_is_reported_and_the_rest_tested() -> None:
    reference = Reference.from_columns("7", {"a": np.zeros(10)}, None, ("b",))
    monitor, _ = make_monitor(FakeReferences(reference))
    await run_events(monitor, [prediction(np.random.default_rng(4), 0.0)])
    missing = "monitor_reference_missing_features"
    assert monitor.sample(missing, feature="b") == 1
    assert monitor.sample(missing, feature="a") == 0


async def test_promotion_switches_the_reference_to_the_new_champion() -> None:
    states = InMemoryStates()
    monitor, _ = make_monitor(FakeReferences(reference_of("7"), reference_of("8")), states)
    rng = np.random.default_rng(5)
    await run_events(monitor, [prediction(rng, 0.0), _promoted("8"), prediction(rng, 0.0)], batch=1)
    drift = monitor.of().drift
    assert drift is not None
    assert drift.reference.version == "8"
    # The saved window now belongs to the new reference; version 7's is gone.
    saved = states.of()
    assert saved.state is not None
    window = json.loads(saved.state)["window"]
    assert (window["version"], window["filled"]) == ("8", 1)
    assert len(saved.rows) == 1
    # The accuracy alert compares live accuracy with the champion's own validation accuracy.
    validation = monitor.metrics.validation_accuracy
    assert [s.labels["version"] for f in validation.collect() for s in f.samples] == ["8"]
    assert monitor.sample("ml_model_validation_accuracy", version="8") == 0.9


def _feedback(correct: bool, variant: Variant = "champion") -> FeedbackReceived:
    return FeedbackReceived(
        producer="gateway",
        request_id="r",
        model_name=MODEL,
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
    monitor, publisher = make_monitor(FakeReferences(reference_of(accuracy=0.9)))
    healthy = [_feedback(bool(c), variant) for c in rng.random(300) < 0.9]
    degraded = [_feedback(bool(c), variant) for c in rng.random(1500) < 0.6]
    await run_events(monitor, [*healthy, *degraded], batch=100)
    drifts = drifts_of(publisher)
    assert [(d.kind, d.variant, d.version) for d in drifts] == [
        ("concept", variant, "3")
    ] * expected
    if expected:
        assert drifts[0].features[0].statistic < 0.9
    # A challenger's accuracy is still tracked (the router judges it; dashboards show it).
    accuracy = monitor.sample("ml_model_accuracy", variant=variant, version="3")
    assert 0.5 < accuracy < 0.7
    assert monitor.sample("monitor_feedback_total", variant=variant, version="3") == 1800


async def test_accuracy_at_the_baseline_publishes_nothing() -> None:
    rng = np.random.default_rng(7)
    monitor, publisher = make_monitor(FakeReferences(reference_of(accuracy=0.9)))
    await run_events(monitor, [_feedback(bool(c)) for c in rng.random(1500) < 0.9], batch=100)
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
    return ModelPromoted(producer="router", model_name=MODEL, version=version, reason="won")


async def test_a_promotion_during_a_batch_saves_a_window_that_restores_unmixed() -> None:
    rng = np.random.default_rng(8)
    states, routing = InMemoryStates(), GatedRouting()
    references = FakeReferences(reference_of("7"), reference_of("8"))
    monitor, _ = make_monitor(references, states, routing)
    # The batch closes a drifted window (its alarm waits at the gate) and leaves 50 rows open.
    drifted = [prediction(rng, 1.0) for _ in range(WINDOW + 50)]
    counting = asyncio.ensure_future(monitor.handlers.on_predictions(drifted))
    await routing.entered.wait()
    switch = asyncio.ensure_future(monitor.handlers.on_champion_changed(_promoted("8")))
    await asyncio.wait({switch}, timeout=2.0)  # give the switch every chance to cut in
    routing.gate.set()
    await asyncio.gather(counting, switch)
    await monitor.handlers.on_predictions([prediction(rng, 0.0) for _ in range(10)])
    # A new process restores what was saved: version 8's rows only, nothing discarded.
    references.champion = "8"
    restarted, _ = make_monitor(references, states)
    await restarted.handlers.on_predictions([prediction(rng, 0.0) for _ in range(5)])
    drift = restarted.of().drift
    assert drift is not None
    assert (drift.reference.version, drift.detector.filled) == ("8", 15)
    assert _discarded(restarted) == 0


def _discarded(monitor: Monitor) -> float:
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
    before, _ = make_monitor(FakeReferences(reference_of()), states)
    await run_events(before, [prediction(rng, 0.0) for _ in range(120)])
    saved = states.of()
    if corrupt == "rows":
        saved.rows = saved.rows[:1]  # the state says 120 rows; 50 are left
    else:
        saved.state = '{"window": {"version": "7"'
    after, _ = make_monitor(FakeReferences(reference_of()), states)
    parked: list[bytes] = []
    await run_events(after, [prediction(rng, 0.0) for _ in range(30)], parked=parked)
    assert parked == []
    assert after.sample("ml_monitor_state_discarded_total", reason=reason) == 1
    assert after.sample("monitor_observations_total") == 30
    # What is saved now is whole again: a third process restores it.
    again, _ = make_monitor(FakeReferences(reference_of()), states)
    await again.handlers.on_predictions([prediction(rng, 0.0)])
    assert again.filled() == 31
    assert _discarded(again) == 0


def _interleaved(*streams: list[PredictionLogged]) -> list[PredictionLogged]:
    return [event for group in zip(*streams, strict=True) for event in group]


async def test_each_model_has_its_own_window_alarm_saved_state_and_metrics() -> None:
    rng = np.random.default_rng(10)
    references, states = FakeReferences(reference_of("7")), InMemoryStates()
    references.others[OTHER] = reference_of("3")
    monitor, publisher = make_monitor(references, states)
    shifted = [prediction(rng, 1.0) for _ in range(3 * WINDOW)]
    steady = [prediction(rng, 0.0, OTHER) for _ in range(3 * WINDOW)]
    await run_events(monitor, _interleaved(shifted, steady), batch=100)
    assert [(d.model_name, d.reference_version) for d in drifts_of(publisher)] == [(MODEL, "7")]
    for model in (MODEL, OTHER):
        assert monitor.sample("monitor_observations_total", model) == 3 * WINDOW
        assert monitor.filled(model) == 0
        assert monitor.sample("monitor_window_size_rows", model) == WINDOW
    drifted = monitor.sample("ml_drift_p_value", MODEL, feature="a")
    assert drifted < 1e-6 < monitor.sample("ml_drift_p_value", OTHER, feature="a")
    assert monitor.sample("ml_drift_events_total", MODEL, kind="data") == 1
    assert monitor.sample("ml_drift_events_total", OTHER, kind="data") == 0
    saved = {m: json.loads(states.of(m).state or "{}")["window"]["version"] for m in states.models}
    assert saved == {MODEL: "7", OTHER: "3"}
    # Each model's reference is read with its own spec, from the catalog.
    assert references.specs[OTHER] == load_spec()


async def test_a_model_whose_reference_fails_dead_letters_only_its_own_events() -> None:
    rng = np.random.default_rng(11)
    references = FakeReferences(reference_of())
    references.others[OTHER] = OSError("the artifact store refused the download")
    now, states = [0.0], InMemoryStates()
    monitor, publisher = make_monitor(references, states, clock=lambda: now[0])
    shifted = [prediction(rng, 1.0) for _ in range(3 * WINDOW)]
    broken = [prediction(rng, 0.0, OTHER) for _ in range(3 * WINDOW)]
    parked: list[bytes] = []
    await run_events(monitor, _interleaved(broken, shifted), batch=100, parked=parked)
    # The healthy model's window filled and its drift was found, in the same batches:
    # saved once a batch, not once an event as a batch retried event by event would.
    assert monitor.sample("monitor_observations_total") == 3 * WINDOW
    assert states.of(MODEL).saves == 3 * WINDOW * 2 // 100
    assert [d.model_name for d in drifts_of(publisher)] == [MODEL]
    # Only the broken model's events were dead-lettered, each once.
    ids = sorted(json.loads(raw)["event_id"] for raw in parked)
    assert ids == sorted(e.event_id for e in broken)
    assert monitor.sample("monitor_model_failures_total", OTHER) >= 1
    assert monitor.sample("monitor_model_failures_total", MODEL) == 0
    # Once its reference is readable again, the held model is tried again and counted.
    references.others[OTHER] = reference_of("3")
    now[0] += Settings().hold_s
    await run_events(monitor, [prediction(rng, 0.0, OTHER) for _ in range(50)], parked=parked)
    assert monitor.filled(OTHER) == 50
    assert len(parked) == 3 * WINDOW


async def test_events_of_an_unregistered_model_are_dead_lettered_naming_the_known_ones() -> None:
    rng = np.random.default_rng(12)
    monitor, _ = make_monitor(FakeReferences(reference_of()))
    parked: list[bytes] = []
    unknown = [prediction(rng, 0.0, "nobody") for _ in range(3)]
    await run_events(monitor, [*unknown, prediction(rng, 0.0)], parked=parked)
    assert len(parked) == 3
    assert monitor.filled() == 1
    # A model registered later is known from its model-registered event on.
    registered = ModelRegistered(
        producer="registry", model_name="nobody", spec_revision=1, spec=load_spec()
    )
    references = FakeReferences(reference_of())
    references.others["nobody"] = reference_of("1")
    later, _ = make_monitor(references)
    await run_events(later, [registered, *[prediction(rng, 0.0, "nobody") for _ in range(3)]], 1)
    assert later.filled("nobody") == 3


class OneModelGate(GatedRouting):
    """Holds only ``model``'s drift alarm at the gate."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    async def running_experiment(self, model_name: str) -> str | None:
        if model_name == self.model:
            return await super().running_experiment(model_name)
        return None


async def test_a_model_waiting_on_its_alarm_does_not_hold_up_another_model() -> None:
    rng = np.random.default_rng(13)
    references = FakeReferences(reference_of())
    references.others[OTHER] = reference_of("3")
    routing = OneModelGate(MODEL)
    monitor, _ = make_monitor(references, routing=routing)
    drifted = [prediction(rng, 1.0) for _ in range(WINDOW)]
    counting = asyncio.create_task(monitor.handlers.on_predictions(drifted))
    await routing.entered.wait()
    # The first model holds its lock while its alarm waits; the other's batch goes through.
    other = [prediction(rng, 0.0, OTHER) for _ in range(10)]
    await asyncio.wait_for(monitor.handlers.on_predictions(other), timeout=2.0)
    assert monitor.filled(OTHER) == 10
    assert not counting.done()
    routing.gate.set()
    await counting
    assert monitor.sample("ml_drift_events_total", kind="data") == 1


async def test_a_promotion_tries_a_held_model_again_at_once() -> None:
    rng = np.random.default_rng(14)
    references = FakeReferences(reference_of())
    references.others[OTHER] = OSError("unreadable")
    monitor, _ = make_monitor(references, clock=lambda: 0.0)  # the hold never runs out
    parked: list[bytes] = []
    await run_events(monitor, [prediction(rng, 0.0, OTHER) for _ in range(5)], parked=parked)
    assert len(parked) == 5
    references.others[OTHER] = reference_of("4")
    promoted = ModelPromoted(producer="router", model_name=OTHER, version="4", reason="won")
    await run_events(monitor, [promoted, *[prediction(rng, 0.0, OTHER) for _ in range(5)]], 1)
    assert monitor.filled(OTHER) == 5
