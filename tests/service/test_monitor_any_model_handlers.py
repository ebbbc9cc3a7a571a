"""The monitor and any model: a regressor's loss and answers, a version without a sample."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from _monitor_fakes import (
    MODEL,
    OTHER,
    WINDOW,
    FakeReferences,
    InMemoryStates,
    drifts_of,
    make_monitor,
    prediction,
    reference_of,
    run_events,
)

from services.monitor.core import PREDICTION, Reference
from services.monitor.service import OUTCOMES_PER_SAVE
from shared.events import FeedbackReceived, ModelApproved, ModelMetrics, PredictionLogged
from shared.spec import ModelSpec

REGRESSOR = "house-prices"
SPEC = ModelSpec.model_validate(
    {
        "name": REGRESSOR,
        "label": "price",
        "task": "regression",
        "features": [{"name": "a", "type": "numeric"}, {"name": "b", "type": "numeric"}],
    }
)
NO_SAMPLE = "its run r9 has no reference/features.parquet"


def _regressor_reference(version: str = "5") -> Reference:
    rng = np.random.default_rng(20)
    columns = {"a": rng.normal(size=3000), "b": rng.normal(size=3000)}
    columns[PREDICTION] = rng.normal(100.0, 10.0, size=3000)
    return Reference.from_columns(version, columns, None, (), None, baseline_loss=4.0)


def _answer(rng: np.random.Generator, shift: float = 0.0) -> PredictionLogged:
    return PredictionLogged(
        producer="gateway",
        request_id="r",
        model_name=REGRESSOR,
        version="5",
        variant="champion",
        features={"a": float(rng.normal()), "b": float(rng.normal())},
        predicted_value=float(rng.normal(100.0 + shift, 10.0)),
        latency_ms=1.0,
    )


def _outcome(error: float, model: str = REGRESSOR, version: str = "5") -> FeedbackReceived:
    return FeedbackReceived(
        producer="gateway",
        request_id="r",
        model_name=model,
        version=version,
        variant="champion",
        predicted_value=100.0 + error,
        true_value=100.0,
    )


def _verdict(correct: bool, version: str = "3") -> FeedbackReceived:
    return FeedbackReceived(
        producer="gateway",
        request_id="r",
        model_name=OTHER,
        version=version,
        variant="champion",
        predicted_class="fraud",
        correct=correct,
    )


async def test_a_regressors_rising_loss_publishes_one_concept_drift() -> None:
    references = FakeReferences(reference_of())
    references.others[REGRESSOR] = _regressor_reference()
    monitor, publisher = make_monitor(references, specs={REGRESSOR: SPEC})
    rng = np.random.default_rng(21)
    healthy = [_outcome(float(e)) for e in rng.normal(scale=2.0, size=400)]  # MSE 4: baseline
    await run_events(monitor, healthy, batch=100)
    assert drifts_of(publisher) == []
    worse = [_outcome(float(e)) for e in rng.normal(scale=5.0, size=1500)]
    await run_events(monitor, worse, batch=100)
    (drift,) = drifts_of(publisher)
    assert (drift.kind, drift.model_name, drift.version, drift.variant) == (
        "concept",
        REGRESSOR,
        "5",
        "champion",
    )
    (result,) = drift.features
    assert (result.feature, result.test, result.threshold) == ("squared_loss", "loss", 4.0)
    labels = {"variant": "champion", "version": "5"}
    assert 15 < monitor.sample("ml_model_loss", REGRESSOR, **labels) < 35
    assert monitor.sample("monitor_feedback_total", REGRESSOR, **labels) == 1900
    assert monitor.sample("ml_model_validation_loss", REGRESSOR, version="5") == 4.0
    assert monitor.sample("ml_model_accuracy", REGRESSOR, **labels) == 0  # never set


async def test_a_regressors_answers_are_windowed_and_their_shift_is_data_drift() -> None:
    references = FakeReferences(reference_of())
    references.others[REGRESSOR] = _regressor_reference()
    monitor, publisher = make_monitor(references, specs={REGRESSOR: SPEC})
    rng = np.random.default_rng(22)
    parked: list[bytes] = []
    await run_events(monitor, [_answer(rng) for _ in range(2 * WINDOW)], parked=parked)
    assert drifts_of(publisher) == []
    assert monitor.sample("monitor_observations_total", REGRESSOR) == 2 * WINDOW
    await run_events(monitor, [_answer(rng, shift=15.0) for _ in range(3 * WINDOW)])
    (drift,) = drifts_of(publisher)
    assert {f.feature: f.test for f in drift.features if f.drifted} == {PREDICTION: "ks"}
    assert parked == []


async def test_a_version_without_a_sample_dead_letters_nothing_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    references = FakeReferences(reference_of())
    references.others[OTHER] = Reference.without_sample("3", NO_SAMPLE, baseline_accuracy=0.9)
    monitor, publisher = make_monitor(references)
    rng = np.random.default_rng(23)
    parked: list[bytes] = []
    interleaved = [
        event
        for pair in zip(
            (prediction(rng, 0.0, OTHER) for _ in range(3 * WINDOW)),
            (prediction(rng, 1.0) for _ in range(3 * WINDOW)),
            strict=True,
        )
        for event in pair
    ]
    with caplog.at_level(logging.WARNING, logger="services.monitor.service"):
        await run_events(monitor, interleaved, batch=100, parked=parked)
    assert parked == []
    assert monitor.sample("monitor_reference_missing", OTHER, version="3") == 1
    assert monitor.sample("monitor_model_failures_total", OTHER) == 0
    assert monitor.sample("monitor_observations_total", OTHER) == 0
    untested = [r for r in caplog.records if "data drift not tested" in r.getMessage()]
    said = [(r.__dict__["model"], r.__dict__["version"], r.__dict__["reason"]) for r in untested]
    assert said == [(OTHER, "3", NO_SAMPLE)]
    assert references.lookups[OTHER] == 1  # once, not once a batch
    # The other model is watched as ever: its shift is found.
    assert [(d.model_name, d.kind) for d in drifts_of(publisher)] == [(MODEL, "data")]
    assert monitor.sample("monitor_reference_missing", MODEL, version="7") == 0
    # Concept drift of the model without a sample still works from its feedback.
    verdicts = [_verdict(bool(c)) for c in rng.random(1500) < 0.6]
    await run_events(monitor, verdicts, batch=100)
    assert [(d.model_name, d.kind) for d in drifts_of(publisher)][1:] == [(OTHER, "concept")]


async def test_an_approval_reads_the_champions_reference_again() -> None:
    references = FakeReferences(reference_of())
    references.others[OTHER] = Reference.without_sample("3", NO_SAMPLE)
    monitor, _ = make_monitor(references)
    rng = np.random.default_rng(24)
    await run_events(monitor, [prediction(rng, 0.0, OTHER) for _ in range(20)])
    assert monitor.sample("monitor_reference_missing", OTHER, version="3") == 1
    references.others[OTHER] = reference_of("3")  # the sample was logged since
    approved = ModelApproved(
        producer="registry",
        model_name=OTHER,
        version="4",
        run_id="r4",
        alias="challenger",
        champion_version="3",
        metrics=ModelMetrics(accuracy=0.9, macro_f1=0.9, validation_rows=100),
    )
    await run_events(monitor, [approved, *(prediction(rng, 0.0, OTHER) for _ in range(20))], 1)
    assert monitor.sample("monitor_reference_missing", OTHER, version="3") == 0
    assert monitor.filled(OTHER) == 20
    assert references.lookups[OTHER] == 2


async def test_the_trackers_of_a_version_without_a_sample_survive_a_restart() -> None:
    references, states = FakeReferences(reference_of()), InMemoryStates()
    references.others[OTHER] = Reference.without_sample("3", NO_SAMPLE, baseline_accuracy=0.9)
    monitor, _ = make_monitor(references, states)
    rng = np.random.default_rng(25)
    await run_events(monitor, [_verdict(bool(c)) for c in rng.random(150) < 0.9], batch=50)
    # No prediction batch carries its state: it is saved every OUTCOMES_PER_SAVE outcomes.
    restarted, _ = make_monitor(references, states)
    await run_events(restarted, [_verdict(True)])
    drift = restarted.of(OTHER).drift
    assert drift is not None
    assert drift.accuracy[("champion", "3")].labelled == OUTCOMES_PER_SAVE + 1
