"""A regressor as the gateway holds it: the same values from rows (Flywheel's pipelines) as
from a frame, an interval only where the model offers one, bad output refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline

from services.gateway.core import ModelFailedError, frame_of, row_scorer
from services.gateway.pool import LoadedModel
from services.gateway.regression import check_intervals, check_values, rows_from_values
from shared.datasets import generate_customers
from shared.spec import ModelSpec, load_spec
from shared.tabular import TabularEncoder

SPEC = load_spec()
SPEND = ModelSpec.model_validate(
    {
        "name": "monthly-spend",
        "label": "monthly_spend",
        "task": "regression",
        "features": [f.model_dump() for f in SPEC.features if f.name != "monthly_spend"],
    }
)


def _pipeline() -> Pipeline:
    frame = generate_customers(500, seed=2)
    encoder = TabularEncoder(SPEND.numeric_features, SPEND.categorical_features)
    pipeline = Pipeline([("features", encoder), ("regressor", Ridge())])
    return pipeline.fit(frame[list(SPEND.feature_names)], frame[SPEND.label])


def _rows(n: int) -> list[dict[str, Any]]:
    frame = generate_customers(n, seed=8)[list(SPEND.feature_names)]
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


class _FrameOnly:
    """A regressor that takes frames only (not Flywheel's pipeline), with an interval."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def predict(self, frame: pd.DataFrame) -> Any:
        assert isinstance(frame, pd.DataFrame)
        return self._pipeline.predict(frame)

    def predict_interval(self, frame: pd.DataFrame) -> Any:
        values = self._pipeline.predict(frame)
        return np.column_stack([values - 1, values + 1])


def test_values_from_rows_match_the_pipeline_on_a_frame() -> None:
    pipeline, rows = _pipeline(), _rows(30)
    assert row_scorer(pipeline, "predict") is not None, "Flywheel's pipeline: the direct path"
    direct = LoadedModel("m", "1", pipeline, "regression")
    through_frame = LoadedModel("m", "1", _FrameOnly(pipeline), "regression")
    expected = pipeline.predict(frame_of(rows, SPEND))
    np.testing.assert_allclose(direct.predict_values(rows, SPEND), expected, rtol=1e-6)
    np.testing.assert_allclose(through_frame.predict_values(rows, SPEND), expected, rtol=1e-9)
    assert direct.predict_values(rows, SPEND).dtype == np.float64


def test_an_interval_only_where_the_model_offers_one() -> None:
    pipeline, rows = _pipeline(), _rows(3)
    assert LoadedModel("m", "1", pipeline, "regression").predict_intervals(rows, SPEND) is None
    offered = LoadedModel("m", "1", _FrameOnly(pipeline), "regression")
    intervals = offered.predict_intervals(rows, SPEND)
    assert intervals is not None
    values = pipeline.predict(frame_of(rows, SPEND))
    np.testing.assert_allclose(intervals, np.column_stack([values - 1, values + 1]))


def test_a_regressor_warms_up_on_its_own_task() -> None:
    # A classifier's warm-up would ask for predict_proba, which Ridge lacks: it would raise.
    LoadedModel("m", "1", _pipeline(), "regression").warm_up(SPEND, times=2)
    with pytest.raises(AttributeError):
        LoadedModel("m", "1", _pipeline(), "classification").warm_up(SPEND, times=1)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (np.array([1.0, np.nan]), "non-finite values"),
        (np.array([1.0]), "shape (1,), expected (2,)"),
        (np.array([[1.0], [2.0]]), "shape (2, 1)"),
    ],
)
def test_values_that_are_not_one_finite_number_a_row_are_the_models_fault(
    values: np.ndarray, problem: str
) -> None:
    with pytest.raises(ModelFailedError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        check_values(values, 2)


def test_intervals_are_checked_and_carried() -> None:
    with pytest.raises(ModelFailedError, match="non-finite intervals"):
        check_intervals(np.array([[0.0, np.inf]]), 1)
    with pytest.raises(ModelFailedError, match="shape"):
        check_intervals(np.array([0.0, 1.0]), 1)
    answered = rows_from_values(np.array([1.0, 2.0]), None)
    assert [(r.value, r.interval) for r in answered] == [(1.0, None), (2.0, None)]
