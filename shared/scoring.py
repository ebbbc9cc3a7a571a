"""One way to score any MLflow model against its spec: sklearn, lightgbm, xgboost or pyfunc.

``load_scorer`` loads the model in its most specific flavour and answers in the spec's
terms: a classifier's probabilities in ``spec.classes`` order, a regressor's values.
Whatever cannot be answered that way raises ``UnusableModelError`` naming the flavour
and the problem, so callers can reject the model with the reason instead of crashing.

Class order of models that carry no class names (a native Booster, a pyfunc model
answering a bare probability matrix): column ``i`` is ``spec.classes[i]``, as when the
model was trained on labels encoded by their position in the spec.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from shared.errors import FlywheelError, InvalidInputError, NotFoundError
from shared.mlflow_client import mlflow_outages
from shared.spec import ModelSpec

#: Flavours tried in this order: the native ones first, pyfunc (every model has it) last.
SUPPORTED_FLAVORS = ("sklearn", "lightgbm", "xgboost", "pyfunc")

#: MLflow's name of the generic flavour in a model's ``MLmodel`` file.
_PYFUNC_KEY = "python_function"


class UnusableModelError(InvalidInputError):
    """A model that cannot answer in its spec's terms (flavour, output shape, classes)."""

    def __init__(self, flavor: str, problem: str) -> None:
        super().__init__(f"{flavor} model: {problem}")
        self.flavor = flavor
        self.problem = problem


class Scorer(Protocol):
    """A loaded model that answers in its spec's terms."""

    flavor: str

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Classification: shape (n, len(spec.classes)), columns in ``spec.classes`` order."""

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        """Regression: the predicted values, shape (n,)."""


def flavor_of(model_uri: str) -> str:
    """The flavour ``load_scorer`` would load ``model_uri`` in (UnusableModelError if none)."""
    with _translated(model_uri, "mlflow"):
        flavors = set(mlflow.models.get_model_info(model_uri).flavors)
    return _pick_flavor(flavors)


def _pick_flavor(flavors: set[str]) -> str:
    """The most specific supported flavour of those a model was logged with.

    >>> _pick_flavor({"python_function", "lightgbm"}), _pick_flavor({"python_function"})
    ('lightgbm', 'pyfunc')
    """
    for flavor in SUPPORTED_FLAVORS:
        if (_PYFUNC_KEY if flavor == "pyfunc" else flavor) in flavors:
            return flavor
    raise UnusableModelError(
        "unknown-flavour", f"logged as {sorted(flavors)}, none of {list(SUPPORTED_FLAVORS)}"
    )


def load_scorer(model_uri: str, spec: ModelSpec) -> Scorer:
    """Load the model at ``model_uri`` in its most specific flavour, to answer for ``spec``.

    Raises NotFoundError when there is no model there, DependencyUnavailableError when
    MLflow does not answer, UnusableModelError when the model cannot serve ``spec``.
    """
    flavor = flavor_of(model_uri)
    with _unusable(flavor, "cannot be loaded"), _translated(model_uri, flavor):
        model = _LOADERS[flavor](model_uri)
    if flavor == "pyfunc":
        return PyfuncScorer(flavor, model, spec)
    if hasattr(model, "get_params"):  # sklearn's estimator API (xgboost/lightgbm's too)
        return EstimatorScorer(flavor, model, spec)
    if flavor == "sklearn":
        raise UnusableModelError(flavor, f"{type(model).__name__} is not an sklearn estimator")
    return BoosterScorer(flavor, model, spec)


def _load_xgboost(model_uri: str) -> Any:
    return mlflow.xgboost.load_model(model_uri)  # xgboost is the model owner's install


_LOADERS: dict[str, Callable[[str], Any]] = {
    "sklearn": mlflow.sklearn.load_model,
    "lightgbm": mlflow.lightgbm.load_model,
    "xgboost": _load_xgboost,
    "pyfunc": mlflow.pyfunc.load_model,
}


class EstimatorScorer:
    """A model with the sklearn API: ``predict_proba`` and ``classes_``, or ``predict``."""

    def __init__(self, flavor: str, model: Any, spec: ModelSpec) -> None:
        self.flavor, self.model, self.spec = flavor, model, spec
        self._columns: list[int] | None = None
        if not spec.is_regression:
            self._columns = _class_columns(flavor, getattr(model, "classes_", None), spec)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Probabilities in ``spec.classes`` order (a class the model lacks has 0)."""
        if self._columns is None:
            raise UnusableModelError(self.flavor, "a regression spec has no probabilities")
        x = _inputs(frame, self.spec, self.flavor)
        with _unusable(self.flavor, "predict_proba failed"):
            raw = np.asarray(self.model.predict_proba(x), dtype=float)
        return _spread(self.flavor, raw, self._columns, len(self.spec.classes))

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's ``predict``, as floats."""
        with _unusable(self.flavor, "predict failed"):
            raw = self.model.predict(_inputs(frame, self.spec, self.flavor))
        return _values(self.flavor, raw)


class BoosterScorer:
    """A native LightGBM or XGBoost Booster: ``predict`` gives probabilities or values."""

    def __init__(self, flavor: str, model: Any, spec: ModelSpec) -> None:
        self.flavor, self.model, self.spec = flavor, model, spec

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Probabilities, column ``i`` for ``spec.classes[i]``; a binary model's P(class 1)."""
        raw = self._predict(frame)
        if raw.ndim == 1 and len(self.spec.classes) == 2:
            raw = np.column_stack([1 - raw, raw])
        return _probabilities(self.flavor, raw, self.spec)

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        """The Booster's predictions, as floats."""
        return _values(self.flavor, self._predict(frame))

    def _predict(self, frame: pd.DataFrame) -> np.ndarray:
        x = _inputs(frame, self.spec, self.flavor)
        with _unusable(self.flavor, "predict failed"):
            if self.flavor == "xgboost":
                xgboost = importlib.import_module("xgboost")
                x = xgboost.DMatrix(x, enable_categorical=True)
            return np.asarray(self.model.predict(x), dtype=float)


class PyfuncScorer:
    """A generic MLflow model: its ``predict`` output is read by shape and type."""

    def __init__(self, flavor: str, model: Any, spec: ModelSpec) -> None:
        self.flavor, self.model, self.spec = flavor, model, spec

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Class-named columns, a numeric (n, k) matrix, or one label per row (one-hot)."""
        raw = self._predict(frame)
        if isinstance(raw, pd.DataFrame) and set(map(str, raw.columns)) <= set(self.spec.classes):
            names = [str(c) for c in raw.columns]
            columns = [self.spec.classes.index(c) for c in names]
            values = _numeric(self.flavor, raw.to_numpy(), "class columns")
            return _spread(self.flavor, values, columns, len(self.spec.classes))
        array = np.asarray(raw)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim == 1:
            return _one_hot(self.flavor, array, self.spec.classes)
        return _probabilities(self.flavor, _numeric(self.flavor, array, "output"), self.spec)

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        """One number per row (a single-column frame or matrix is taken as that)."""
        return _values(self.flavor, self._predict(frame))

    def _predict(self, frame: pd.DataFrame) -> Any:
        with _unusable(self.flavor, "predict failed"):
            return self.model.predict(_inputs(frame, self.spec, self.flavor))


def _inputs(frame: pd.DataFrame, spec: ModelSpec, flavor: str) -> pd.DataFrame:
    """The spec's features in order; gradient-boosting libraries take categoricals as
    pandas categories (their own category list maps them), not strings."""
    missing = [name for name in spec.feature_names if name not in frame.columns]
    if missing:
        raise InvalidInputError(f"input lacks the spec's features {missing}")
    x = frame[list(spec.feature_names)]
    if flavor in ("lightgbm", "xgboost") and spec.categorical_features:
        x = x.astype({name: "category" for name in spec.categorical_features})
    return x


def _class_columns(flavor: str, classes: Any, spec: ModelSpec) -> list[int]:
    """Where each of the model's classes goes among ``spec.classes``.

    Labels encoded as 0..k-1 (a model trained on positions) map by position.
    """
    if classes is None:
        raise UnusableModelError(flavor, "a classifier needs classes_ (none on the model)")
    names = [str(c) for c in np.asarray(classes).tolist()]
    unknown = [name for name in names if name not in spec.classes]
    if not unknown:
        return [spec.classes.index(name) for name in names]
    if names == [str(i) for i in range(len(names))] and len(names) <= len(spec.classes):
        return list(range(len(names)))
    raise UnusableModelError(flavor, f"classes {unknown} are not in the spec {list(spec.classes)}")


def _spread(flavor: str, raw: np.ndarray, columns: list[int], width: int) -> np.ndarray:
    """Put the model's probability columns at their places among the spec's classes."""
    if raw.ndim != 2 or raw.shape[1] != len(columns):
        raise UnusableModelError(
            flavor, f"probabilities of shape {raw.shape}, expected (n, {len(columns)})"
        )
    out = np.zeros((raw.shape[0], width), dtype=float)
    out[:, columns] = raw
    return out


def _probabilities(flavor: str, raw: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """A bare (n, k) matrix whose column ``i`` is ``spec.classes[i]``."""
    k = len(spec.classes)
    if raw.ndim != 2 or raw.shape[1] != k:
        raise UnusableModelError(
            flavor,
            f"output of shape {raw.shape}, expected (n, {k}) for classes {list(spec.classes)}",
        )
    return raw


def _one_hot(flavor: str, labels: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Probability 1 on each row's predicted label."""
    if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
        labels = labels.astype(int)  # 1.0 is the label "1"
    names = [str(label) for label in labels.tolist()]
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise UnusableModelError(
            flavor, f"predicted labels {unknown[:5]} are not in the spec's classes {list(classes)}"
        )
    out = np.zeros((len(names), len(classes)), dtype=float)
    out[np.arange(len(names)), [classes.index(name) for name in names]] = 1.0
    return out


def _values(flavor: str, raw: Any) -> np.ndarray:
    """One float per row."""
    array = np.asarray(raw)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise UnusableModelError(flavor, f"output of shape {array.shape}, expected one value a row")
    return _numeric(flavor, array, "output")


def _numeric(flavor: str, array: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.asarray(array, dtype=float)
    except (TypeError, ValueError) as error:
        raise UnusableModelError(flavor, f"{what} is not numeric ({array.dtype})") from error


@contextlib.contextmanager
def _unusable(flavor: str, step: str) -> Iterator[None]:
    """Turn a model's own exception into UnusableModelError naming the flavour and step."""
    try:
        yield
    except FlywheelError:
        raise
    except Exception as error:
        raise UnusableModelError(flavor, f"{step}: {error!r}") from error


@contextlib.contextmanager
def _translated(model_uri: str, flavor: str) -> Iterator[None]:
    """MLflow outages → DependencyUnavailableError, no model there → NotFoundError, any
    other MLflow refusal (a bad URI, a broken ``MLmodel``) → UnusableModelError."""
    try:
        with mlflow_outages():
            yield
    except MlflowException as error:
        if _missing(error):
            raise NotFoundError(f"no model at {model_uri}: {error.message}") from error
        raise UnusableModelError(flavor, f"MLflow refused {model_uri}: {error.message}") from error


def _missing(error: MlflowException) -> bool:
    return bool(error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST))
