"""A team's own trainer: how a spec's reference resolves, and what Flywheel checks it returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import Pipeline

from flywheel.trainers import lightgbm_trainer
from services.trainer.core import TrainingConfig, build_pipeline
from services.trainer.custom import (
    CUSTOM_PREFIX,
    TrainerError,
    requirements_of,
    resolve_trainer,
    saved_types,
    train_custom,
)
from shared.datasets import generate_customers
from shared.errors import InvalidInputError
from shared.spec import FeatureSpec, ModelSpec, load_spec

SEGMENT = load_spec()
CONFIG = TrainingConfig()
ROWS = generate_customers(400, seed=3)

#: A regression spec: a house price from its size and district.
PRICE = ModelSpec(
    name="price",
    label="price",
    task="regression",
    features=(
        FeatureSpec(name="size", type="numeric"),
        FeatureSpec(name="district", type="categorical", categories=("north", "south")),
    ),
)


def _houses(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    size = rng.uniform(40, 200, rows)
    district = rng.choice(["north", "south"], rows)
    price = 3.0 * size + np.where(district == "north", 150.0, 0.0) + rng.normal(0, 10, rows)
    return pd.DataFrame({"size": size, "district": district, "price": price})


HOUSES = _houses(400, seed=3)


def _ref(function: str) -> str:
    """A reference to a function of this module, as a spec would name it."""
    return f"{__name__}:{function}"


def _with_trainer(spec: ModelSpec, function: str) -> ModelSpec:
    return spec.model_copy(update={"trainer": _ref(function)})


# Trainers a spec can name: each returns what its name says.


def logistic(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Pipeline:
    pipeline = build_pipeline(spec, LogisticRegression(max_iter=500))
    return pipeline.fit(train[list(spec.feature_names)], train[spec.label])


seen: dict[str, Any] = {}


def recording(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Pipeline:
    seen.update(train=train.copy(), validation=validation.copy(), spec=spec)
    model = logistic(train, validation, spec)
    validation.loc[:, spec.label] = "vandalised"  # must not reach the logged holdout
    return model


def raising(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    raise ValueError("learning rate must be positive")


@dataclass
class Answers:
    """An estimator that answers whatever it was built with."""

    classes_: list[str] = field(default_factory=lambda: list(SEGMENT.classes))
    probabilities: Any = None
    values: Any = None

    def predict_proba(self, frame: pd.DataFrame) -> Any:
        if self.probabilities is None:
            return np.full((len(frame), len(self.classes_)), 1 / len(self.classes_))
        return self.probabilities(len(frame)) if callable(self.probabilities) else None

    def predict(self, frame: pd.DataFrame) -> Any:
        if self.values is not None:
            return self.values(len(frame))
        return np.array([self.classes_[0]] * len(frame))


@dataclass
class Reordered:
    """A fitted classifier whose classes_ come in the spec's order, not sorted."""

    inner: Any
    classes_: list[str] = field(default_factory=lambda: list(SEGMENT.classes))

    def predict_proba(self, frame: pd.DataFrame) -> Any:
        sorted_classes = [str(c) for c in self.inner.classes_]
        columns = [sorted_classes.index(c) for c in self.classes_]
        return self.inner.predict_proba(frame)[:, columns]

    def predict(self, frame: pd.DataFrame) -> Any:
        return self.inner.predict(frame)


def spec_ordered(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return Reordered(logistic(train, validation, spec))


def no_predict_proba(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return object()


def ridge(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Pipeline:
    pipeline = build_pipeline(spec, RidgeClassifier())  # classes_, but no probabilities
    return pipeline.fit(train[list(spec.feature_names)], train[spec.label])


def other_classes(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return Answers(classes_=["at_risk", "steady", "vip"])


def two_columns(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return Answers(probabilities=lambda n: np.full((n, 2), 0.5))


def nan_probabilities(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return Answers(probabilities=lambda n: np.full((n, 3), np.nan))


def scores_not_probabilities(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return Answers(probabilities=lambda n: np.full((n, 3), 2.0))


def unpicklable(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    model = Answers()
    model.hook = lambda: None  # type: ignore[attr-defined]
    return model


def predict_fails(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return Answers(values=lambda n: 1 / 0)


def values_2d(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return Answers(values=lambda n: np.zeros((n, 2)))


def values_inf(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return Answers(values=lambda n: np.r_[np.inf, np.zeros(n - 1)])


def values_text(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return Answers(values=lambda n: np.array(["high"] * n))


def metric_shadows(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return logistic(train, validation, spec), {"accuracy": 0.99}


def metric_nan(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return logistic(train, validation, spec), {"auc_pr": math.nan}


def metric_text(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return logistic(train, validation, spec), {"note": "good"}


def triple(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Any:
    return logistic(train, validation, spec), {}, "extra"


# Resolution


def test_a_module_function_reference_resolves_to_that_function() -> None:
    assert resolve_trainer(_ref("logistic")) is logistic


def test_an_entry_point_name_resolves_through_the_flywheel_trainers_group() -> None:
    assert resolve_trainer("lightgbm") is lightgbm_trainer.train


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no-such-trainer", "no entry point of that name in group flywheel.trainers"),
        ("team_code_nowhere.training:fit", "module 'team_code_nowhere.training' cannot be"),
        (f"{__name__}:no_such_function", f"module '{__name__}' has no 'no_such_function'"),
        ("math:pi", "float is not callable"),
    ],
)
def test_a_reference_that_does_not_resolve_says_why(reference: str, message: str) -> None:
    with pytest.raises(TrainerError, match=r"^trainer ") as raised:
        resolve_trainer(reference)
    assert message in str(raised.value)
    assert reference in str(raised.value)


def test_an_unknown_entry_point_lists_the_installed_ones() -> None:
    with pytest.raises(TrainerError, match=r"installed: .*lightgbm"):
        resolve_trainer("xgboost-of-my-dreams")


# Training through a trainer


def test_the_lightgbm_entry_point_trains_a_classifier_measured_by_flywheel() -> None:
    model = train_custom(ROWS, SEGMENT.model_copy(update={"trainer": "lightgbm"}), CONFIG)
    assert model.algorithm == f"{CUSTOM_PREFIX}lightgbm"
    assert model.params["trainer"] == "lightgbm"
    assert (model.metrics.accuracy or 0.0) > 0.6
    assert model.metrics.validation_rows == 80
    extras = model.metrics.model_extra or {}
    assert extras["best_iteration"] >= 1  # the trainer's own metric rides along
    assert "roc_auc" in extras  # Flywheel's, computed on the validation frame
    assert model.holdout.columns.tolist() == [*SEGMENT.feature_names, SEGMENT.label]
    assert len(model.holdout) == 80
    assert model.reference.columns.tolist() == list(SEGMENT.feature_names)
    assert np.asarray(model.confusion).sum() == 80
    served = model.pipeline.predict_proba(ROWS[list(SEGMENT.feature_names)].head(4))
    assert served.shape == (4, 3)


def test_the_lightgbm_entry_point_trains_a_regressor() -> None:
    model = train_custom(HOUSES, PRICE.model_copy(update={"trainer": "lightgbm"}), CONFIG)
    assert model.metrics.is_regression
    assert model.metrics.rmse is not None
    assert model.metrics.mae is not None
    assert model.metrics.r2 is not None
    assert model.metrics.r2 > 0.9  # the price is size and district plus a little noise
    assert model.metrics.accuracy is None
    assert model.holdout[PRICE.label].dtype == np.float64
    assert model.confusion == []


def test_the_trainer_gets_the_split_frames_and_cannot_alter_the_holdout() -> None:
    model = train_custom(ROWS, _with_trainer(SEGMENT, "recording"), CONFIG)
    assert len(seen["train"]) == 320
    assert len(seen["validation"]) == 80
    assert seen["spec"].trainer == _ref("recording")
    assert set(seen["train"].columns) == {*SEGMENT.feature_names, SEGMENT.label}
    assert set(model.holdout[SEGMENT.label]) <= set(SEGMENT.classes)
    pd.testing.assert_frame_equal(model.holdout, seen["validation"])


@pytest.mark.parametrize(
    ("function", "spec", "message"),
    [
        ("raising", SEGMENT, "raised ValueError: learning rate must be positive"),
        ("no_predict_proba", SEGMENT, "classes_ [] are not the spec's"),
        ("ridge", SEGMENT, "returned Pipeline, which has no predict_proba()"),
        ("other_classes", SEGMENT, "classes_ ['at_risk', 'steady', 'vip'] are not the spec's"),
        ("two_columns", SEGMENT, "predict_proba() gave shape (80, 2); want (80, 3)"),
        ("nan_probabilities", SEGMENT, "predict_proba() gave 240 non-finite values"),
        ("scores_not_probabilities", SEGMENT, "rows are not probabilities"),
        ("unpicklable", SEGMENT, "cannot be pickled"),
        ("no_predict_proba", PRICE, "has no predict()"),
        ("predict_fails", PRICE, "predict() failed on the validation frame: ZeroDivisionError"),
        ("values_2d", PRICE, "predict() gave shape (80, 2) for 80 rows"),
        ("values_inf", PRICE, "predict() gave 1 non-finite values"),
        ("values_text", PRICE, "non-numeric values"),
        ("metric_shadows", SEGMENT, "extra metric 'accuracy', one of Flywheel's own"),
        ("metric_nan", SEGMENT, "metric 'auc_pr' = nan; want finite"),
        ("metric_text", SEGMENT, "metric 'note' = 'good'; want a number"),
        ("triple", SEGMENT, "returned a tuple of 3"),
    ],
)
def test_an_unusable_trainer_result_is_a_trainer_error_naming_it(
    function: str, spec: ModelSpec, message: str
) -> None:
    rows = HOUSES if spec.is_regression else ROWS
    with pytest.raises(TrainerError) as raised:
        train_custom(rows, _with_trainer(spec, function), CONFIG)
    assert str(raised.value).startswith(_ref(function))
    assert message in str(raised.value)


def test_a_plain_sklearn_trainer_passes_the_same_checks() -> None:
    # Positive control for the checks above: nothing about a usable estimator trips them.
    model = train_custom(ROWS, _with_trainer(SEGMENT, "logistic"), CONFIG)
    assert model.algorithm == f"custom:{_ref('logistic')}"
    assert (model.metrics.macro_f1 or 0.0) > 0.5


def test_classes_in_any_order_are_measured_as_the_same_model() -> None:
    plain = train_custom(ROWS, _with_trainer(SEGMENT, "logistic"), CONFIG).metrics
    reordered = train_custom(ROWS, _with_trainer(SEGMENT, "spec_ordered"), CONFIG).metrics
    assert SEGMENT.classes != tuple(sorted(SEGMENT.classes))  # the case is real
    assert reordered.log_loss == pytest.approx(plain.log_loss)
    assert reordered.accuracy == plain.accuracy
    assert (reordered.model_extra or {})["roc_auc"] == pytest.approx(
        (plain.model_extra or {})["roc_auc"]
    )


def test_a_spec_without_a_trainer_is_not_a_custom_training() -> None:
    with pytest.raises(InvalidInputError, match="names no trainer"):
        train_custom(ROWS, SEGMENT, CONFIG)


def test_a_regression_label_that_is_not_numeric_is_a_data_problem() -> None:
    spec = ModelSpec(
        name="bad",
        label="plan",
        task="regression",
        features=(FeatureSpec(name="age", type="numeric"),),
        trainer=_ref("logistic"),
    )
    with pytest.raises(
        InvalidInputError, match="plan: a regression label must be a finite"
    ) as raised:
        train_custom(ROWS, spec, CONFIG)
    assert not isinstance(raised.value, TrainerError)


# What MLflow needs to save and load a team's estimator


def test_a_lightgbm_pipeline_is_saved_trusting_its_own_types_and_pinning_lightgbm() -> None:
    model = train_custom(ROWS, SEGMENT.model_copy(update={"trainer": "lightgbm"}), CONFIG)
    types = saved_types(model.pipeline)
    assert "lightgbm.sklearn.LGBMClassifier" in types
    assert "shared.tabular.TabularEncoder" in types
    assert requirements_of(types) == [f"lightgbm=={version('lightgbm')}"]
