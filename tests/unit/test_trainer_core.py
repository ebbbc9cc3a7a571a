"""The trainer's pure core: data versions, the split, fitting and metrics."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from services.trainer.core import (
    TrainingConfig,
    build_pipeline,
    combine_batches,
    data_version,
    make_classifier,
    split,
    train,
)
from shared.datasets import generate_customers
from shared.errors import InvalidInputError
from shared.spec import ModelSpec, load_spec

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec()


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return combine_batches([generate_customers(1500, seed) for seed in (1, 2)])


def test_data_version_ignores_order_but_not_content() -> None:
    assert data_version([A, B, C]) == data_version([C, A, B])
    assert data_version([A, B]) != data_version([A, C])
    assert data_version([A, B]) != data_version([A, B, C])
    assert len(data_version([A])) == 64


def test_split_is_stratified_seeded_and_holds_out_the_fraction(
    spec: ModelSpec, frame: pd.DataFrame
) -> None:
    x_train, x_val, y_train, y_val = split(frame, spec, 0.2, seed=7)
    assert len(x_val) == pytest.approx(0.2 * len(frame), abs=1)
    assert list(x_train.columns) == list(spec.feature_names)
    overall = frame[spec.label].value_counts(normalize=True)
    held_out = y_val.value_counts(normalize=True)
    for cls in spec.classes:
        assert held_out[cls] == pytest.approx(overall[cls], abs=0.01)
    again = split(frame, spec, 0.2, seed=7)[1]
    assert again.index.equals(x_val.index)
    assert not split(frame, spec, 0.2, seed=8)[1].index.equals(x_val.index)
    assert set(y_train.index).isdisjoint(y_val.index)


def test_training_on_generated_data_beats_chance_by_far(
    spec: ModelSpec, frame: pd.DataFrame
) -> None:
    model = train(frame, spec, TrainingConfig(seed=3))
    chance = frame[spec.label].value_counts(normalize=True).max()  # always the majority class
    metrics = model.metrics
    assert (metrics.accuracy or 0.0) > chance + 0.25
    assert 0.6 < (metrics.macro_f1 or 0.0) <= 1.0
    assert metrics.log_loss is not None
    assert 0 < metrics.log_loss < math.log(3)  # better than guessing uniformly
    assert metrics.validation_rows == 600
    assert model.train_rows == 2400
    assert sorted(model.pipeline.classes_) == sorted(spec.classes)
    assert list(model.reference.columns) == list(spec.feature_names)
    assert model.params["algorithm"] == "logistic_regression"


def test_reference_sample_is_capped(spec: ModelSpec, frame: pd.DataFrame) -> None:
    model = train(frame, spec, TrainingConfig(reference_rows=100))
    assert len(model.reference) == 100
    assert spec.label not in model.reference.columns


def test_pipeline_accepts_unknown_categories_at_prediction(
    spec: ModelSpec, frame: pd.DataFrame
) -> None:
    model = train(frame, spec, TrainingConfig())
    row = frame[list(spec.feature_names)].head(1).assign(plan="enterprise")
    assert model.pipeline.predict(row)[0] in spec.classes


def test_too_few_rows_or_one_class_is_invalid_input(spec: ModelSpec) -> None:
    tiny = generate_customers(10, 1)
    with pytest.raises(InvalidInputError, match="rows"):
        train(tiny, spec, TrainingConfig())
    one_class = generate_customers(200, 1).assign(segment="steady")
    with pytest.raises(InvalidInputError, match="one class"):
        train(one_class, spec, TrainingConfig())


def test_unknown_algorithm_and_empty_window_are_rejected(spec: ModelSpec) -> None:
    with pytest.raises(InvalidInputError, match="unknown algorithm"):
        make_classifier("magic", 0)
    with pytest.raises(InvalidInputError):
        combine_batches([])
    assert [
        name for name, _ in build_pipeline(spec, make_classifier("logistic_regression", 0)).steps
    ] == [
        "features",
        "classifier",
    ]
