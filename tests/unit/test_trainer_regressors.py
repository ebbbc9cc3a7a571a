"""Regression candidates: ridge, gradient boosting and the torch MLP's regression head."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from services.trainer.core import TrainingConfig, reference_predictions, train
from services.trainer.regression import REGRESSORS, evaluate_regression
from services.trainer.settings import Settings
from shared.datasets import generate_customers
from shared.errors import InvalidInputError
from shared.spec import FeatureSpec, ModelSpec, load_spec
from shared.torch_mlp import TorchMLPRegressor

ALL = ("logistic_regression", "hist_gradient_boosting", "torch_mlp")
PLANS = ("basic", "plus", "premium")


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    features = (
        *(FeatureSpec(name=n, type="numeric") for n in ("x1", "x2", "x3")),
        FeatureSpec(name="plan", type="categorical", categories=PLANS),
    )
    return ModelSpec(name="price", label="price", task="regression", features=features)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """A target with a linear part, a curved part and a categorical offset, plus noise."""
    rng = np.random.default_rng(7)
    rows = 2000
    x = rng.normal(size=(rows, 3))
    plan = rng.choice(PLANS, size=rows)
    offset = pd.Series(plan).map({"basic": 0.0, "plus": 2.0, "premium": 5.0}).to_numpy()
    price = 100 + 3 * x[:, 0] - 2 * x[:, 1] + 2 * x[:, 2] ** 2 + offset + rng.normal(0, 0.5, rows)
    return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "plan": plan, "price": price})


@pytest.fixture(scope="module")
def every_candidate(spec: ModelSpec, frame: pd.DataFrame) -> dict[str, float]:
    """Each candidate's R² when trained alone (names as published)."""
    scores = {}
    for name in ALL:
        model = train(frame, spec, TrainingConfig(candidates=(name,), device="cpu"))
        scores[model.algorithm] = model.metrics.r2 or 0.0
    return scores


def test_every_candidate_beats_predicting_the_mean_by_far(
    every_candidate: dict[str, float],
) -> None:
    assert set(every_candidate) == {"ridge", "hist_gradient_boosting", "torch_mlp"}
    # R² is 0 for the mean; the linear part and the offset explain about two thirds.
    assert all(r2 > 0.4 for r2 in every_candidate.values()), every_candidate


def test_the_nonlinear_candidates_learn_the_curved_part_ridge_cannot(
    every_candidate: dict[str, float],
) -> None:
    assert every_candidate["hist_gradient_boosting"] > 0.95
    assert every_candidate["torch_mlp"] > 0.95
    assert every_candidate["ridge"] < 0.8


def test_the_lowest_rmse_is_published_unless_another_metric_is_configured(
    spec: ModelSpec, frame: pd.DataFrame
) -> None:
    model = train(frame, spec, TrainingConfig(candidates=ALL, device="cpu"))
    assert set(model.candidates) == {"ridge", "hist_gradient_boosting", "torch_mlp"}
    best = min(model.candidates, key=lambda name: model.candidates[name].rmse or np.inf)
    assert model.algorithm == best
    assert model.metrics == model.candidates[best]
    assert model.params["selection_metric"] == "rmse"
    config = TrainingConfig(candidates=ALL, device="cpu", regression_selection_metric="r2")
    by_r2 = train(frame, spec, config)
    assert by_r2.algorithm == max(by_r2.candidates, key=lambda n: by_r2.candidates[n].r2 or 0)


def test_the_regression_selection_metric_is_a_setting_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRAINER_REGRESSION_SELECTION_METRIC", raising=False)
    assert Settings().to_config().regression_selection_metric == "rmse"
    monkeypatch.setenv("TRAINER_REGRESSION_SELECTION_METRIC", "mae")
    config = Settings().to_config()
    assert (config.regression_selection_metric, config.selection_metric) == ("mae", "macro_f1")


def test_a_regression_model_has_values_for_holdout_reference_and_predictions(
    spec: ModelSpec, frame: pd.DataFrame
) -> None:
    model = train(frame, spec, TrainingConfig(device="cpu"))
    metrics = model.metrics
    assert metrics.is_regression
    assert metrics.accuracy is None
    assert metrics.validation_rows == 400
    assert 0 < (metrics.mae or 0) <= (metrics.rmse or 0)
    assert model.algorithm == "ridge"
    assert model.pipeline.steps[-1][0] == "regressor"
    assert list(model.holdout.columns) == [*spec.feature_names, spec.label]
    assert model.holdout[spec.label].dtype == np.float64
    assert model.confusion == []
    predictions = reference_predictions(model)
    assert list(predictions.columns) == ["prediction"]
    assert predictions["prediction"].dtype == np.float64
    np.testing.assert_allclose(predictions["prediction"], model.pipeline.predict(model.reference))


def test_a_classifiers_reference_predictions_are_its_class_labels() -> None:
    spec = load_spec()
    model = train(generate_customers(600, 1), spec, TrainingConfig())
    predictions = reference_predictions(model)["prediction"]
    assert len(predictions) == len(model.reference)
    assert set(predictions) <= set(spec.classes)
    assert len(set(predictions)) >= 2


@pytest.mark.parametrize(
    ("bad", "shown"), [("cheap", "'cheap'"), (float("nan"), "nan"), (float("inf"), "inf")]
)
def test_a_label_that_is_not_a_finite_number_names_its_column_and_row(
    spec: ModelSpec, frame: pd.DataFrame, bad: str | float, shown: str
) -> None:
    broken = frame.head(100).astype({"price": object})
    broken.loc[37, "price"] = bad
    with pytest.raises(InvalidInputError, match=f"price: .*finite number; row 37 is {shown}"):
        train(broken, spec, TrainingConfig())


def test_a_constant_target_is_refused(spec: ModelSpec, frame: pd.DataFrame) -> None:
    with pytest.raises(InvalidInputError, match=r"every price is 3\.0"):
        train(frame.head(100).assign(price=3.0), spec, TrainingConfig())


def test_an_unknown_candidate_is_named_with_the_known_ones(
    spec: ModelSpec, frame: pd.DataFrame
) -> None:
    with pytest.raises(InvalidInputError, match="unknown algorithm 'svm'; known: "):
        train(frame, spec, TrainingConfig(candidates=("svm",)))
    assert set(REGRESSORS) == set(ALL)


def test_real_data_diabetes_progression_is_learnt_by_every_candidate() -> None:
    data = load_diabetes(as_frame=True).frame  # 442 patients, ten numeric features
    features = tuple(FeatureSpec(name=str(c), type="numeric") for c in data.columns[:-1])
    spec = ModelSpec(name="diabetes", label="target", task="regression", features=features)
    model = train(data, spec, TrainingConfig(candidates=ALL, device="cpu", seed=1))
    # Published linear models reach R² ≈ 0.45–0.5 on this set; the mean has 0.
    assert all((m.r2 or 0) > 0.25 for m in model.candidates.values()), model.candidates
    assert (model.metrics.r2 or 0) > 0.35


def test_the_torch_regressor_round_trips_through_pickle_in_the_targets_units() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 3)).astype("float32")
    y = 1000.0 + 100.0 * x[:, 0] + 50.0 * np.abs(x[:, 1])
    model = TorchMLPRegressor(hidden=(32,), max_epochs=60, device="cpu", seed=3).fit(x, y)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(x), model.predict(x))
    assert all(isinstance(w, np.ndarray) for w, _ in restored.layers_)
    assert restored.score(x, y) > 0.95  # standardised for training, mapped back here
    assert abs(float(np.mean(restored.predict(x))) - float(np.mean(y))) < 10.0
    metrics = evaluate_regression(restored, pd.DataFrame(x), pd.Series(y))
    assert (metrics.rmse or np.inf) < 0.25 * float(np.std(y))


def test_the_torch_regressor_is_deterministic_with_a_seed_and_stops_early() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 2)).astype("float32")
    y = x[:, 0] * 2.0 + rng.normal(0, 0.1, 600)
    first = TorchMLPRegressor(hidden=(8,), max_epochs=400, patience=3, device="cpu").fit(x, y)
    again = TorchMLPRegressor(hidden=(8,), max_epochs=400, patience=3, device="cpu").fit(x, y)
    np.testing.assert_array_equal(first.predict(x), again.predict(x))
    report = first.fit_report_
    assert report["epochs"] < 400
    assert report["epochs"] - report["best_epoch"] == 3
    assert report["device"] == "cpu"


def test_a_nan_feature_fails_the_regressors_fit_loudly() -> None:
    x = np.random.default_rng(2).normal(size=(200, 2)).astype("float32")
    x[::9, 0] = np.nan
    with pytest.raises(FloatingPointError, match="loss is nan"):
        TorchMLPRegressor(max_epochs=3, device="cpu").fit(x, x[:, 1])
