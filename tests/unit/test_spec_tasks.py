"""The contracts of issue 12: a spec's task, a regressor's metrics and answers."""

from __future__ import annotations

import pydantic
import pytest

from shared.events import FeedbackReceived, ModelMetrics, PredictionLogged
from shared.spec import ModelSpec, serving_incompatibilities

FEATURES = ({"name": "x", "type": "numeric"},)


def _spec(**fields: object) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "label": "y", "features": FEATURES, **fields})


def test_a_classification_spec_needs_two_classes_and_names_the_field() -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        _spec(classes=["only"])
    assert raised.value.errors()[0]["loc"] == ("classes",)
    with pytest.raises(pydantic.ValidationError, match="at least two classes"):
        _spec()


def test_a_regression_spec_has_no_classes() -> None:
    assert _spec(task="regression").is_regression
    with pytest.raises(pydantic.ValidationError, match="regression spec has no classes"):
        _spec(task="regression", classes=["a", "b"])


def test_changing_the_task_breaks_serving() -> None:
    before, after = _spec(classes=["a", "b"]), _spec(task="regression")
    assert "task changed: classification -> regression" in serving_incompatibilities(before, after)


def test_a_trainer_reference_is_a_module_function_or_an_entry_point_name() -> None:
    assert _spec(task="regression", trainer="team.training:fit").trainer == "team.training:fit"
    assert _spec(task="regression", trainer="lightgbm").trainer == "lightgbm"
    with pytest.raises(pydantic.ValidationError, match="trainer"):
        _spec(task="regression", trainer="not a reference")


def test_metrics_are_a_classifiers_or_a_regressors() -> None:
    regressor = ModelMetrics(rmse=1.5, mae=1.0, r2=0.4, validation_rows=10)
    assert regressor.is_regression
    assert not ModelMetrics(accuracy=0.9, macro_f1=0.8, validation_rows=10).is_regression
    with pytest.raises(pydantic.ValidationError, match="rmse and mae"):
        ModelMetrics(rmse=1.5, validation_rows=10)


def test_a_prediction_answers_with_a_class_or_a_value_never_both() -> None:
    base: dict[str, object] = {"producer": "gateway", "request_id": "r", "model_name": "m"}
    base |= {"version": "1"}
    base |= {"variant": "champion", "features": {"x": 1.0}, "latency_ms": 1.0}
    assert PredictionLogged.model_validate(base | {"predicted_value": 2.5}).predicted_value == 2.5
    with pytest.raises(pydantic.ValidationError, match="not both"):
        PredictionLogged.model_validate(base | {"predicted_value": 2.5, "predicted_class": "a"})
    with pytest.raises(pydantic.ValidationError, match="not both"):
        PredictionLogged.model_validate(base)


def test_feedback_carries_a_regressors_outcome() -> None:
    feedback = FeedbackReceived(
        producer="gateway",
        request_id="r",
        model_name="m",
        version="1",
        variant="champion",
        predicted_value=2.0,
        true_value=3.5,
    )
    assert (feedback.predicted_class, feedback.true_value) == (None, 3.5)
