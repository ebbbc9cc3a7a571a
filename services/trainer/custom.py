"""The team's own training code: find a spec's trainer, run it, check what it returns.

A spec's ``trainer`` names ``package.module:function`` or an entry point in group
``flywheel.trainers``. Flywheel splits the window, calls the function as::

    def train(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec)
        -> Estimator | tuple[Estimator, dict[str, float]]

and computes the validation metrics itself on the validation frame, so a team's
model is gated on the same numbers as Flywheel's own. The estimator takes the
spec's feature columns as a DataFrame: a classifier answers ``predict_proba``
with ``classes_`` the spec's classes, a regressor ``predict`` with one number a
row. Whatever keeps it from that (not found, raised, unusable output) is a
``TrainerError`` naming the trainer and the cause: the handler publishes it as
``model-rejected`` and the champion keeps serving. See docs/custom-trainers.md.

Pure apart from importing the team's code: frames in, a ``TrainedModel`` out.
"""

from __future__ import annotations

import importlib
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points, packages_distributions, version
from typing import Any, NamedTuple, cast

import numpy as np
import pandas as pd
import skops.io  # type: ignore[import-untyped]
from sklearn.metrics import confusion_matrix
from sklearn.pipeline import Pipeline

from services.trainer.core import TrainedModel, TrainingConfig, evaluate, split
from services.trainer.regression import evaluate_regression, split_regression
from shared.errors import InvalidInputError
from shared.events import ModelMetrics
from shared.spec import TRAINER_ENTRY_POINT_GROUP, ModelSpec

#: A team trainer's algorithm name in MLflow and on ModelTrained: ``custom:<reference>``.
CUSTOM_PREFIX = "custom:"

TrainerFunction = Callable[[pd.DataFrame, pd.DataFrame, ModelSpec], Any]

#: How far a row of class probabilities may sum away from 1 (float32 rounding, not more).
PROBABILITY_TOLERANCE = 1e-3


class TrainerError(InvalidInputError):
    """A team's trainer was not found, raised, or returned something Flywheel cannot serve.

    Its message names the trainer and the cause; it is the ``trainer`` gate's detail
    of the ``model-rejected`` event.
    """


def resolve_trainer(reference: str) -> TrainerFunction:
    """The function ``reference`` names: ``package.module:function`` or an entry point.

    >>> resolve_trainer("math:sqrt")(16.0)
    4.0
    >>> resolve_trainer("no-such-trainer")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    services.trainer.custom.TrainerError: trainer 'no-such-trainer': no entry point of that \
name in group flywheel.trainers (installed: ...)
    """
    function = _from_module(reference) if ":" in reference else _from_entry_point(reference)
    if not callable(function):
        raise TrainerError(f"trainer {reference!r}: {type(function).__name__} is not callable")
    return cast(TrainerFunction, function)


def _from_module(reference: str) -> object:
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the team's module: any import-time failure is its own
        raise TrainerError(
            f"trainer {reference!r}: module {module_name!r} cannot be imported: "
            f"{type(error).__name__}: {error}"
        ) from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise TrainerError(
            f"trainer {reference!r}: module {module_name!r} has no {attribute!r}"
        ) from None


def _from_entry_point(name: str) -> object:
    found = entry_points(group=TRAINER_ENTRY_POINT_GROUP)
    if name not in found.names:
        installed = ", ".join(sorted(found.names)) or "none"
        raise TrainerError(
            f"trainer {name!r}: no entry point of that name in group "
            f"{TRAINER_ENTRY_POINT_GROUP} (installed: {installed})"
        )
    try:
        return found[name].load()
    except Exception as error:  # e.g. the package behind it is not installed
        raise TrainerError(
            f"trainer {name!r}: entry point {found[name].value!r} cannot be loaded: "
            f"{type(error).__name__}: {error}"
        ) from error


def train_custom(frame: pd.DataFrame, spec: ModelSpec, config: TrainingConfig) -> TrainedModel:
    """Split ``frame`` as Flywheel does, fit with the spec's trainer, check and measure it."""
    if spec.trainer is None:
        raise InvalidInputError(f"model {spec.name!r} names no trainer")
    reference = spec.trainer
    function = resolve_trainer(reference)
    fitting, validation = split_frames(frame, spec, config)
    started = time.perf_counter()
    estimator, extra = call_trainer(function, reference, fitting, validation, spec)
    seconds = time.perf_counter() - started
    metrics = validation_metrics(estimator, reference, validation, spec)
    # The trainer's own metrics ride along as extra fields (logged to MLflow, on the event).
    merged = ModelMetrics.model_validate({**metrics.model_dump(), **extra})
    return _trained(
        CustomFit(reference, estimator, fitting, validation, merged, seconds), spec, config
    )


class CustomFit(NamedTuple):
    """What a team's trainer fitted, on which frames, and how it measured."""

    reference: str
    estimator: Any
    fitting: pd.DataFrame
    validation: pd.DataFrame
    metrics: ModelMetrics
    seconds: float


def split_frames(
    frame: pd.DataFrame, spec: ModelSpec, config: TrainingConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and validation frames (features and label) the trainer is given.

    Flywheel's own split of the task: stratified with labels as strings for a
    classifier, a seeded shuffle with labels as floats for a regressor.
    """
    splitter = split_regression if spec.is_regression else split
    x_train, x_val, y_train, y_val = splitter(frame, spec, config.validation_fraction, config.seed)
    return (
        x_train.assign(**{spec.label: y_train}).reset_index(drop=True),
        x_val.assign(**{spec.label: y_val}).reset_index(drop=True),
    )


def call_trainer(
    function: TrainerFunction,
    reference: str,
    fitting: pd.DataFrame,
    validation: pd.DataFrame,
    spec: ModelSpec,
) -> tuple[Any, dict[str, float]]:
    """Run the team's function on copies of the frames; its estimator and extra metrics."""
    try:
        # Copies: the validation frame is logged as the holdout after the trainer ran.
        result = function(fitting.copy(), validation.copy(), spec)
    except Exception as error:
        raise TrainerError(f"{reference} raised {type(error).__name__}: {error}") from error
    if isinstance(result, tuple):
        if len(result) != 2:
            raise TrainerError(
                f"{reference} returned a tuple of {len(result)}; "
                "expected an estimator or (estimator, metrics)"
            )
        estimator, extra = result
        return estimator, extra_metrics(extra, reference)
    return result, {}


def extra_metrics(extra: object, reference: str) -> dict[str, float]:
    """The trainer's own metrics, checked: names as strings, finite numbers, none of Flywheel's.

    >>> extra_metrics({"best_iteration": 41}, "t:f")
    {'best_iteration': 41.0}
    >>> extra_metrics({"accuracy": 0.99}, "t:f")
    Traceback (most recent call last):
    ...
    services.trainer.custom.TrainerError: t:f returned extra metric 'accuracy', one of \
Flywheel's own (computed on the validation frame); rename it
    """
    if not isinstance(extra, dict):
        raise TrainerError(f"{reference} returned {type(extra).__name__} as metrics; want a dict")
    checked: dict[str, float] = {}
    for name, value in extra.items():
        if not isinstance(name, str) or not name:
            raise TrainerError(f"{reference} returned a metric named {name!r}; want a string")
        if name in ModelMetrics.model_fields or name in _COMPUTED:
            raise TrainerError(
                f"{reference} returned extra metric {name!r}, one of Flywheel's own "
                "(computed on the validation frame); rename it"
            )
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise TrainerError(f"{reference} returned metric {name!r} = {value!r}; want a number")
        if not math.isfinite(float(value)):
            raise TrainerError(f"{reference} returned metric {name!r} = {value}; want finite")
        checked[name] = float(value)
    return checked


#: Metrics ``evaluate`` adds beyond ModelMetrics' declared fields.
_COMPUTED = frozenset({"roc_auc", "calibration_error"})


def validation_metrics(
    estimator: Any, reference: str, validation: pd.DataFrame, spec: ModelSpec
) -> ModelMetrics:
    """Flywheel's metrics of ``estimator`` on the validation frame, once its output is usable.

    Raises TrainerError when the estimator cannot predict, answers in other classes
    than the spec's, in another shape, with non-finite values, or cannot be pickled.
    """
    features, truth = validation[list(spec.feature_names)], validation[spec.label]
    if spec.is_regression:
        _regression_output(estimator, reference, features)
        metrics = evaluate_regression(estimator, features, truth)
    else:
        answered = _classifier_output(estimator, reference, features, spec)
        metrics = evaluate(cast(Pipeline, answered), features, truth)
    _check_picklable(estimator, reference)
    return metrics


def _predicted(estimator: Any, method: str, reference: str, features: pd.DataFrame) -> Any:
    answer = getattr(estimator, method, None)
    if not callable(answer):
        kind = "regression" if method == "predict" else "classification"
        raise TrainerError(
            f"{reference} returned {type(estimator).__name__}, which has no {method}() "
            f"(a {kind} model must answer it)"
        )
    try:
        return answer(features)
    except Exception as error:
        raise TrainerError(
            f"{reference}: the estimator's {method}() failed on the validation frame: "
            f"{type(error).__name__}: {error}"
        ) from error


def _regression_output(estimator: Any, reference: str, features: pd.DataFrame) -> np.ndarray:
    raw = _predicted(estimator, "predict", reference, features)
    try:
        values = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        raise TrainerError(f"{reference}: predict() gave non-numeric values") from None
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.shape != (len(features),):
        raise TrainerError(
            f"{reference}: predict() gave shape {values.shape} for {len(features)} rows; "
            f"want ({len(features)},)"
        )
    _check_finite(values, reference, "predict()")
    return values


@dataclass(frozen=True)
class _Answered:
    """A classifier's probabilities on the validation frame, columns in sorted class order
    (what ``evaluate``'s metrics assume; a team's ``classes_`` may come in any order)."""

    classes_: np.ndarray
    probabilities: np.ndarray

    def predict_proba(self, _: pd.DataFrame) -> np.ndarray:
        return self.probabilities


def _classifier_output(
    estimator: Any, reference: str, features: pd.DataFrame, spec: ModelSpec
) -> _Answered:
    classes = [str(c) for c in getattr(estimator, "classes_", ())]
    if sorted(classes) != sorted(spec.classes):
        raise TrainerError(
            f"{reference}: the estimator's classes_ {classes} are not the spec's "
            f"{list(spec.classes)}"
        )
    probabilities = np.asarray(
        _predicted(estimator, "predict_proba", reference, features), dtype=float
    )
    want = (len(features), len(classes))
    if probabilities.shape != want:
        raise TrainerError(
            f"{reference}: predict_proba() gave shape {probabilities.shape}; want {want}"
        )
    _check_finite(probabilities, reference, "predict_proba()")
    sums = probabilities.sum(axis=1)
    if probabilities.min() < 0 or np.abs(sums - 1).max() > PROBABILITY_TOLERANCE:
        raise TrainerError(
            f"{reference}: predict_proba() rows are not probabilities (each in [0, 1], "
            f"summing to 1; row sums range {sums.min():.4g}..{sums.max():.4g})"
        )
    _predicted(estimator, "predict", reference, features)  # MLflow's signature needs it
    order = np.argsort(classes)
    # Rows within the tolerance, made exact: float32 sums trip the log loss's own check.
    exact = probabilities / sums[:, None]
    return _Answered(np.asarray(classes)[order], exact[:, order])


def _check_finite(values: np.ndarray, reference: str, method: str) -> None:
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise TrainerError(f"{reference}: {method} gave {bad} non-finite values (NaN or inf)")


def _check_picklable(estimator: Any, reference: str) -> None:
    try:
        pickle.dumps(estimator)
    except Exception as error:
        raise TrainerError(
            f"{reference}: the estimator cannot be pickled, so MLflow cannot save it: "
            f"{type(error).__name__}: {error}"
        ) from error


def _trained(fit: CustomFit, spec: ModelSpec, config: TrainingConfig) -> TrainedModel:
    estimator, fitting, validation = fit.estimator, fit.fitting, fit.validation
    features = list(spec.feature_names)
    reference_rows = fitting[features].sample(
        n=min(config.reference_rows, len(fitting)), random_state=config.seed
    )
    algorithm = f"{CUSTOM_PREFIX}{fit.reference}"
    return TrainedModel(
        # Any sklearn-compatible estimator, not only a Pipeline: what is logged and served.
        pipeline=cast(Pipeline, estimator),
        algorithm=algorithm,
        metrics=fit.metrics,
        train_rows=len(fitting),
        reference=reference_rows.reset_index(drop=True),
        params={
            "task": spec.task,
            "algorithm": algorithm,
            "trainer": fit.reference,
            "estimator": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
            "validation_fraction": config.validation_fraction,
            "seed": config.seed,
            "train_rows": len(fitting),
            "validation_rows": len(validation),
        },
        holdout=validation[[*features, spec.label]].reset_index(drop=True),
        confusion=_confusion(estimator, validation[features], validation[spec.label], spec),
        fit_seconds=fit.seconds,
    )


def _confusion(
    estimator: Any, features: pd.DataFrame, truth: pd.Series, spec: ModelSpec
) -> list[list[int]]:
    if spec.is_regression:
        return []
    classes = [str(c) for c in estimator.classes_]
    predicted = np.asarray(estimator.predict(features)).astype(str)
    matrix = confusion_matrix(np.asarray(truth).astype(str), predicted, labels=classes)
    return cast(list[list[int]], matrix.tolist())


def saved_types(estimator: Any) -> list[str]:
    """The types the estimator's saved (skops) file holds, for MLflow to trust on loading.

    Flywheel's own pipelines trust a fixed list; a team's estimator is trusted as the
    team's code is (it runs in the trainer anyway), type by type as saved.
    """
    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(estimator)))


def requirements_of(types: list[str]) -> list[str]:
    """``dist==version`` of the installed packages those types come from (Flywheel's aside).

    >>> requirements_of(["collections.OrderedDict", "shared.tabular.TabularEncoder"])
    []
    """
    providers = packages_distributions()
    found = {
        dist
        for name in types
        for dist in providers.get(name.partition(".")[0], [])
        if dist not in _PINNED_ELSEWHERE
    }
    return sorted(f"{dist}=={version(dist)}" for dist in found)


#: Distributions not named per model: Flywheel itself and what every model already pins.
_PINNED_ELSEWHERE = frozenset({"flywheel", "scikit-learn"})
