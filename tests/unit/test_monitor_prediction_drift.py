"""Drift of the prediction distribution, and references a version may lack or not read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.monitor.adapters import prediction_problem, reference_from_frame
from services.monitor.core import PREDICTION, DriftConfig, ModelDrift, Reference
from shared.events import FeedbackReceived, PredictionLogged
from shared.spec import ModelSpec

WINDOW = 200
CONFIG = DriftConfig(window_size=WINDOW, persistence=1, pooled_windows=0)
REGRESSOR = ModelSpec.model_validate(
    {
        "name": "house-prices",
        "label": "price",
        "task": "regression",
        "features": [{"name": "a", "type": "numeric"}, {"name": "b", "type": "numeric"}],
    }
)
CLASSIFIER = ModelSpec.model_validate(
    {
        "name": "churn",
        "label": "churned",
        "classes": ["no", "yes"],
        "features": [{"name": "a", "type": "numeric"}, {"name": "b", "type": "numeric"}],
    }
)
CLASSES = ("no", "yes")


def _sample(rows: int = 4000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows)})


def _reference(spec: ModelSpec, predictions: pd.Series | None) -> Reference:
    return reference_from_frame("7", _sample(), spec, 0.9, predictions, loss=1.0)


def _regression_events(count: int, value_shift: float, seed: int) -> list[PredictionLogged]:
    rng = np.random.default_rng(seed)
    return [
        PredictionLogged(
            producer="gateway",
            request_id="r",
            model_name="house-prices",
            version="7",
            variant="champion",
            features={"a": float(rng.normal()), "b": float(rng.normal())},
            predicted_value=float(rng.normal(100.0 + value_shift, 10.0)),
            latency_ms=1.0,
        )
        for _ in range(count)
    ]


def _classifier_events(count: int, share_yes: float, seed: int) -> list[PredictionLogged]:
    rng = np.random.default_rng(seed)
    return [
        PredictionLogged(
            producer="gateway",
            request_id="r",
            model_name="churn",
            version="7",
            variant="champion",
            features={"a": float(rng.normal()), "b": float(rng.normal())},
            predicted_class=CLASSES[int(rng.random() < share_yes)],
            confidence=0.8,
            latency_ms=1.0,
        )
        for _ in range(count)
    ]


def _value_predictions() -> pd.Series:
    return pd.Series(np.random.default_rng(1).normal(100.0, 10.0, size=4000), name=PREDICTION)


def _class_predictions() -> pd.Series:
    labels = np.where(np.random.default_rng(2).random(4000) < 0.2, "yes", "no")
    return pd.Series(labels, name=PREDICTION)


def test_a_regressors_shifted_predictions_drift_by_ks_with_stationary_features() -> None:
    drift = ModelDrift.start("house-prices", _reference(REGRESSOR, _value_predictions()), CONFIG)
    quiet = drift.count(_regression_events(WINDOW, 0.0, seed=3))
    assert quiet.alarms == []
    (verdict,) = quiet.outcome.verdicts
    assert {f.feature: f.test for f in verdict.features} == {"a": "ks", "b": "ks", PREDICTION: "ks"}
    shifted = drift.count(_regression_events(WINDOW, 8.0, seed=4))
    (alarm,) = shifted.alarms
    assert {f.feature for f in alarm.features if f.drifted} == {PREDICTION}


def test_a_classifiers_shifted_classes_drift_by_chi2() -> None:
    drift = ModelDrift.start("churn", _reference(CLASSIFIER, _class_predictions()), CONFIG)
    assert drift.count(_classifier_events(WINDOW, 0.2, seed=5)).alarms == []
    (alarm,) = drift.count(_classifier_events(WINDOW, 0.6, seed=6)).alarms
    drifted = {f.feature: f.test for f in alarm.features if f.drifted}
    assert drifted == {PREDICTION: "chi2"}


def test_without_reference_predictions_only_the_features_are_tested() -> None:
    drift = ModelDrift.start("house-prices", _reference(REGRESSOR, None), CONFIG)
    assert not drift.reference.tests_predictions
    # The answers moved far, but there is nothing to compare them with.
    (verdict,) = drift.count(_regression_events(WINDOW, 50.0, seed=7)).outcome.verdicts
    assert {f.feature for f in verdict.features} == {"a", "b"}


@pytest.mark.parametrize(
    ("frame", "spec", "problem"),
    [
        (pd.DataFrame({"prediction": [1.5, 2.0]}), REGRESSOR, None),
        (pd.DataFrame({"prediction": ["no", "yes"]}), CLASSIFIER, None),
        (pd.DataFrame({"value": [1.5]}), REGRESSOR, "no 'prediction' column"),
        (pd.DataFrame({"prediction": ["x"]}), REGRESSOR, "column is not numeric"),
    ],
)
def test_reference_predictions_are_used_only_when_they_fit_the_task(
    frame: pd.DataFrame, spec: ModelSpec, problem: str | None
) -> None:
    found = prediction_problem(frame, spec)
    assert found == problem if problem is None else problem in (found or "")


def test_a_version_without_a_sample_is_not_tested_yet_watches_concept_drift() -> None:
    reference = Reference.without_sample("4", "its run r1 has no reference/features.parquet", 0.9)
    assert not reference.testable
    drift = ModelDrift.start("churn", reference, CONFIG)
    assert not drift.testable
    feedback = FeedbackReceived(
        producer="gateway",
        request_id="r",
        model_name="churn",
        version="4",
        variant="champion",
        predicted_class="yes",
        correct=False,
    )
    judged = drift.judge(feedback)
    assert judged is not None
    assert judged.accuracy == 0.0
    # Its (empty) state saves and restores like any other.
    restored = ModelDrift.start("churn", reference, CONFIG)
    assert restored.restore((drift.state(), [], []))
    assert restored.accuracy[("champion", "4")].labelled == 1
