"""shared.scoring: real small models of each flavour, logged to a temporary MLflow store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc.model import PythonModel
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from shared.errors import NotFoundError
from shared.scoring import UnusableModelError, flavor_of, load_scorer
from shared.spec import FeatureSpec, ModelSpec

FEATURES = (
    FeatureSpec(name="x1", type="numeric"),
    FeatureSpec(name="x2", type="numeric"),
    FeatureSpec(name="color", type="categorical", categories=("red", "blue")),
)
CLASSES = ("low", "mid", "high")
CLASSIFIER = ModelSpec(name="m", label="y", classes=CLASSES, features=FEATURES)
BINARY = ModelSpec(name="m", label="y", classes=("no", "yes"), features=FEATURES)
REGRESSOR = ModelSpec(name="m", label="y", task="regression", features=FEATURES)


@pytest.fixture(autouse=True, scope="module")
def _store(tmp_path_factory: pytest.TempPathFactory) -> None:
    # One store for the module: creating MLflow's tables takes seconds.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")
    mlflow.set_experiment("scoring")


def _frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "color": rng.choice(["red", "blue"], size=n),
        }
    )


def _labels(frame: pd.DataFrame, classes: tuple[str, ...]) -> np.ndarray:
    # Classes in the frame's order differ from the spec's: the scorer must reorder.
    score = frame["x1"] + (frame["color"] == "red")
    bins = np.quantile(score, np.linspace(0, 1, len(classes) + 1)[1:-1])
    return np.asarray(classes)[np.digitize(score, bins)]


def _pipeline(estimator: Any) -> Pipeline:
    encode = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="ignore"), ["color"])], remainder="passthrough"
    )
    return Pipeline([("encode", encode), ("model", estimator)])


def _logged(log: Any, model: Any = None, **kwargs: Any) -> str:
    with mlflow.start_run():
        args = () if model is None else (model,)
        # Given requirements: inferring them imports the model in a subprocess (seconds each).
        info = log(*args, name="model", pip_requirements=["mlflow"], **kwargs)
    return str(info.model_uri)


def test_sklearn_classifier_probabilities_follow_the_specs_class_order() -> None:
    frame = _frame()
    model = _pipeline(LogisticRegression()).fit(frame, _labels(frame, CLASSES))
    uri = _logged(mlflow.sklearn.log_model, model)
    scorer = load_scorer(uri, CLASSIFIER)
    proba = scorer.predict_proba(frame)
    # sklearn sorts classes_ alphabetically (high, low, mid): the spec says low, mid, high.
    expected = model.predict_proba(frame)[:, [list(model.classes_).index(c) for c in CLASSES]]
    assert scorer.flavor == "sklearn"
    assert flavor_of(uri) == "sklearn"
    np.testing.assert_allclose(proba, expected)
    assert list(model.classes_) != list(CLASSES)


def test_sklearn_regressor_values() -> None:
    frame = _frame()
    target = 3 * frame["x1"] - frame["x2"]
    model = _pipeline(LinearRegression()).fit(frame, target)
    values = load_scorer(_logged(mlflow.sklearn.log_model, model), REGRESSOR).predict_values(frame)
    assert values.shape == (len(frame),)
    np.testing.assert_allclose(values, target, atol=1e-6)


def test_classifier_with_classes_outside_the_spec_is_unusable() -> None:
    frame = _frame()
    model = _pipeline(LogisticRegression()).fit(frame, _labels(frame, ("a", "b", "c")))
    with pytest.raises(UnusableModelError, match=r"sklearn model: classes \['a', 'b', 'c'\]"):
        load_scorer(_logged(mlflow.sklearn.log_model, model), CLASSIFIER)


def test_lightgbm_classifier_via_the_lightgbm_flavour() -> None:
    frame = _frame()
    x = frame.astype({"color": "category"})
    model = lightgbm.LGBMClassifier(n_estimators=20, min_child_samples=5, verbose=-1)
    model.fit(x, _labels(frame, CLASSES))
    uri = _logged(mlflow.lightgbm.log_model, model)
    scorer = load_scorer(uri, CLASSIFIER)
    proba = scorer.predict_proba(frame)  # strings in, as the gateway has them
    order = [list(model.classes_).index(c) for c in CLASSES]
    expected = np.asarray(model.predict_proba(x))[:, order]
    assert scorer.flavor == "lightgbm"
    np.testing.assert_allclose(proba, expected)


def test_native_lightgbm_booster_binary_gives_both_columns() -> None:
    frame = _frame()
    x = frame.astype({"color": "category"})
    y = (_labels(frame, BINARY.classes) == "yes").astype(int)
    params = {"objective": "binary", "verbose": -1, "min_data_in_leaf": 5}
    booster = lightgbm.train(params, lightgbm.Dataset(x, y), num_boost_round=10)
    scorer = load_scorer(_logged(mlflow.lightgbm.log_model, booster), BINARY)
    proba = scorer.predict_proba(frame)
    assert proba.shape == (len(frame), 2)
    np.testing.assert_allclose(proba[:, 1], booster.predict(x))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_native_lightgbm_booster_regression() -> None:
    frame = _frame()
    x = frame.astype({"color": "category"})
    params = {"objective": "regression", "verbose": -1, "min_data_in_leaf": 5}
    booster = lightgbm.train(params, lightgbm.Dataset(x, frame["x1"]), num_boost_round=10)
    values = load_scorer(_logged(mlflow.lightgbm.log_model, booster), REGRESSOR).predict_values(
        frame
    )
    np.testing.assert_allclose(values, booster.predict(x))


class LabelModel(PythonModel):
    """Answers one class label per row."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return np.where(model_input["x1"] > 0, "high", "low")


class ProbabilityModel(PythonModel):
    """Answers a frame with one column per class, in an order of its own."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        high = 1 / (1 + np.exp(-model_input["x1"].to_numpy()))
        return pd.DataFrame(
            {"high": high * 0.8, "mid": 0.2 * np.ones(len(high)), "low": (1 - high) * 0.8}
        )


class WideModel(PythonModel):
    """Answers four columns for a three-class spec."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return np.full((len(model_input), 4), 0.25)


def test_pyfunc_labels_are_one_hot() -> None:
    frame = _frame(20)
    scorer = load_scorer(_logged(mlflow.pyfunc.log_model, python_model=LabelModel()), CLASSIFIER)
    proba = scorer.predict_proba(frame)
    assert scorer.flavor == "pyfunc"
    np.testing.assert_array_equal(proba[:, 2], (frame["x1"] > 0).astype(float))
    np.testing.assert_array_equal(proba[:, 0], (frame["x1"] <= 0).astype(float))
    np.testing.assert_array_equal(proba[:, 1], 0.0)


def test_pyfunc_class_named_columns_are_reordered() -> None:
    frame = _frame(20)
    uri = _logged(mlflow.pyfunc.log_model, python_model=ProbabilityModel())
    proba = load_scorer(uri, CLASSIFIER).predict_proba(frame)
    high = 1 / (1 + np.exp(-frame["x1"].to_numpy()))
    np.testing.assert_allclose(proba[:, 0], (1 - high) * 0.8)
    np.testing.assert_allclose(proba[:, 2], high * 0.8)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_pyfunc_output_of_the_wrong_width_names_the_shape() -> None:
    uri = _logged(mlflow.pyfunc.log_model, python_model=WideModel())
    scorer = load_scorer(uri, CLASSIFIER)
    with pytest.raises(UnusableModelError, match=r"pyfunc model: output of shape \(5, 4\)"):
        scorer.predict_proba(_frame(5))


def test_pyfunc_labels_as_regression_values_are_not_numeric() -> None:
    uri = _logged(mlflow.pyfunc.log_model, python_model=LabelModel())
    with pytest.raises(UnusableModelError, match="pyfunc model: output is not numeric"):
        load_scorer(uri, REGRESSOR).predict_values(_frame(5))


def test_a_missing_model_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        load_scorer("models:/nobody/1", CLASSIFIER)


def _model_dir(tmp_path: Path, flavors: str) -> str:
    """A logged model's folder with only its ``MLmodel`` file, naming ``flavors``."""
    (tmp_path / "MLmodel").write_text(f"artifact_path: model\nflavors:\n{flavors}")
    return str(tmp_path)


def test_an_xgboost_model_without_xgboost_installed_names_the_flavour(tmp_path: Path) -> None:
    flavors = "  xgboost:\n    data: model.xgb\n    xgb_version: 2.1.0\n"
    uri = _model_dir(tmp_path, flavors + "  python_function:\n    loader_module: mlflow.xgboost\n")
    assert flavor_of(uri) == "xgboost"
    with pytest.raises(UnusableModelError, match="xgboost model: cannot be loaded") as raised:
        load_scorer(uri, CLASSIFIER)
    assert raised.value.flavor == "xgboost"


def test_an_unsupported_flavour_is_named(tmp_path: Path) -> None:
    uri = _model_dir(tmp_path, "  h2o:\n    data: model.h2o\n")
    with pytest.raises(UnusableModelError, match=r"logged as \['h2o'\], none of"):
        load_scorer(uri, CLASSIFIER)
