"""One model's drift state: dedupe, saving and restoring, concept drift once per version."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.monitor.core import UNRESTORABLE, DriftConfig, ModelDrift, Reference, SavedState
from shared.events import FeedbackReceived, PredictionLogged

WINDOW = 50
CONFIG = DriftConfig(window_size=WINDOW, persistence=1, pooled_windows=0, recent_ids=80)


def _reference(version: str = "7", accuracy: float | None = 0.9) -> Reference:
    rng = np.random.default_rng(0)
    return Reference.from_columns(version, {"a": rng.normal(size=2000)}, None, (), accuracy)


def _predictions(count: int, shift: float = 0.0, seed: int = 1) -> list[PredictionLogged]:
    rng = np.random.default_rng(seed)
    return [
        PredictionLogged(
            producer="gateway",
            request_id="r",
            model_name="m",
            version="7",
            variant="champion",
            features={"a": float(x)},
            predicted_class="steady",
            confidence=0.9,
            latency_ms=1.0,
        )
        for x in rng.normal(shift, size=count)
    ]


def _saved(drift: ModelDrift, chunks: list[dict[str, object]]) -> SavedState:
    """What a store hands back: the state and row chunks, through JSON."""
    return json.loads(json.dumps(drift.state())), json.loads(json.dumps(chunks)), []


def test_a_redelivered_batch_is_not_counted_twice_and_shadow_answers_never() -> None:
    drift = ModelDrift.start("m", _reference(), CONFIG)
    events = _predictions(30)
    drift.count(drift.fresh(events))
    shadow = [e.model_copy(update={"shadow": True}) for e in _predictions(5, seed=2)]
    assert drift.fresh([*events, *shadow]) == []
    assert len(drift.fresh(_predictions(5, seed=3))) == 5
    assert drift.detector.filled == 30


def test_the_ids_remembered_are_bounded() -> None:
    drift = ModelDrift.start("m", _reference(), CONFIG)
    first = _predictions(60, seed=4)
    drift.count(first)
    drift.count(_predictions(60, seed=5))
    assert len(drift.recent) == CONFIG.recent_ids
    assert drift.fresh(first[:40]) == first[:40]  # the oldest are forgotten


def test_saves_append_the_batch_and_rewrite_the_window_when_it_closes() -> None:
    drift = ModelDrift.start("m", _reference(), CONFIG)
    first = drift.count(_predictions(20, seed=6)).save
    assert first.restart_rows  # nothing saved yet for this reference: whole window
    drift.saved()
    second = drift.count(_predictions(20, seed=7)).save
    assert not second.restart_rows
    assert second.rows is not None
    assert len(second.rows["labels"]) == 20
    closing = drift.count(_predictions(20, seed=8)).save
    assert closing.restart_rows
    assert closing.state["window"]["filled"] == 10


def test_a_shifted_window_raises_a_drift_event_for_the_model() -> None:
    drift = ModelDrift.start("m", _reference(), CONFIG)
    counted = drift.count(_predictions(WINDOW, shift=2.0))
    assert [(d.model_name, d.kind, d.reference_version) for d in counted.alarms] == [
        ("m", "data", "7")
    ]
    assert counted.kept == WINDOW
    assert counted.filled == 0


def test_a_saved_state_restores_the_window_trackers_and_ids() -> None:
    drift = ModelDrift.start("m", _reference(), CONFIG)
    events = _predictions(30, seed=9)
    rows = drift.count(events).save.rows
    assert rows is not None
    drift.judge(_feedback(True))
    restored = ModelDrift.start("m", _reference(), CONFIG)
    assert restored.restore(_saved(drift, [rows]))
    assert restored.detector.filled == 30
    assert restored.fresh(events) == []
    assert restored.accuracy[("champion", "3")].labelled == 1
    assert not restored.unsaved


def test_another_versions_state_is_not_restored_and_an_inconsistent_one_raises() -> None:
    drift = ModelDrift.start("m", _reference("7"), CONFIG)
    rows = drift.count(_predictions(30, seed=10)).save.rows
    assert rows is not None
    other = ModelDrift.start("m", _reference("8"), CONFIG)
    assert not other.restore(_saved(drift, [rows]))
    assert other.detector.filled == 0
    with pytest.raises(UNRESTORABLE):
        ModelDrift.start("m", _reference("7"), CONFIG).restore(_saved(drift, []))


def _feedback(correct: bool, variant: str = "champion") -> FeedbackReceived:
    return FeedbackReceived.model_validate(
        {
            "producer": "gateway",
            "request_id": "r",
            "model_name": "m",
            "version": "3",
            "variant": variant,
            "predicted_class": "steady",
            "correct": correct,
        }
    )


@pytest.mark.parametrize(("variant", "alarms"), [("champion", 1), ("challenger", 0)])
def test_concept_drift_is_raised_once_per_champion_version(variant: str, alarms: int) -> None:
    drift = ModelDrift.start("m", _reference(accuracy=0.9), CONFIG)
    rng = np.random.default_rng(11)
    judged = [drift.judge(_feedback(bool(c), variant)) for c in rng.random(3000) < 0.5]
    drifts = [j.drift for j in judged if j is not None and j.drift is not None]
    assert [(d.kind, d.variant, d.model_name) for d in drifts] == [
        ("concept", variant, "m")
    ] * alarms
    last = judged[-1]
    assert last is not None
    assert last.accuracy is not None
    assert 0.4 < last.accuracy < 0.6


def test_feedback_without_a_label_or_a_baseline_says_nothing() -> None:
    unlabelled = _feedback(True).model_copy(update={"correct": None})
    assert ModelDrift.start("m", _reference(), CONFIG).judge(unlabelled) is None
    assert ModelDrift.start("m", _reference(accuracy=None), CONFIG).judge(_feedback(True)) is None
    assert ModelDrift.start("m", _reference(), CONFIG).judge(_feedback(True)) is not None
