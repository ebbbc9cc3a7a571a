"""Training logic: data versions, the feature pipeline, the split, fitting and validation metrics.

Pure: frames in, fitted pipeline and numbers out. No broker, MLflow, Redis or files.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from shared.errors import InvalidInputError
from shared.events import DatasetRef, ModelMetrics
from shared.spec import ModelSpec
from shared.tabular import TabularEncoder
from shared.torch_mlp import TorchMLPClassifier

#: Fewest rows worth training on: below this the held-out metrics mean nothing.
MIN_TRAINING_ROWS = 20

ClassifierFactory = Callable[[int, str], Any]

#: Classifier factories by algorithm name, each taking the seed and the torch device.
CLASSIFIERS: dict[str, ClassifierFactory] = {
    "logistic_regression": lambda seed, _: LogisticRegression(max_iter=1000, random_state=seed),
    "hist_gradient_boosting": lambda seed, _: HistGradientBoostingClassifier(
        max_iter=200, early_stopping=True, random_state=seed
    ),
    "torch_mlp": lambda seed, device: TorchMLPClassifier(seed=seed, device=device),
}

SelectionMetric = Literal["accuracy", "macro_f1", "roc_auc", "log_loss"]

#: How the published regressor is picked (``services.trainer.regression``).
RegressionMetric = Literal["rmse", "mae", "r2"]

#: Metrics where lower is better; the rest are maximised.
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})


@dataclass(frozen=True)
class TrainingConfig:
    """How to split, which candidates to fit and how to pick the one published."""

    candidates: tuple[str, ...] = ("logistic_regression",)
    selection_metric: SelectionMetric = "macro_f1"
    regression_selection_metric: RegressionMetric = "rmse"
    validation_fraction: float = 0.2
    seed: int = 42
    reference_rows: int = 10_000
    device: str = "auto"
    older_fraction: float = 0.0
    """Share of the rows of batches older than the window sampled into the training set."""


@dataclass(frozen=True)
class TrainedModel:
    """The chosen fitted pipeline, its validation metrics and what MLflow should record."""

    pipeline: Pipeline
    algorithm: str
    metrics: ModelMetrics
    train_rows: int
    reference: pd.DataFrame = field(repr=False)
    params: dict[str, str | int | float] = field(default_factory=dict)
    candidates: dict[str, ModelMetrics] = field(default_factory=dict)
    holdout: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    confusion: list[list[int]] = field(default_factory=list)
    fit_seconds: float = 0.0
    device: str = "cpu"


def reference_predictions(model: TrainedModel) -> pd.DataFrame:
    """The model's outputs on its reference rows, one column ``prediction``.

    A regressor's values as floats, a classifier's labels as strings: what the
    monitor compares the served predictions' distribution with.
    """
    predicted = np.asarray(model.pipeline.predict(model.reference))
    kind = np.float64 if model.metrics.is_regression else str
    return pd.DataFrame({"prediction": predicted.astype(kind)})


def data_version(hashes: Iterable[str]) -> str:
    """Hash of a set of batch hashes: independent of their order.

    >>> data_version(["b" * 64, "a" * 64]) == data_version(["a" * 64, "b" * 64])
    True
    """
    joined = "\n".join(sorted(set(hashes)))
    return hashlib.sha256(joined.encode()).hexdigest()


def check_announced_rows(ref: DatasetRef, frame: pd.DataFrame) -> None:
    """Raise InvalidInputError when the file does not hold the rows its event announced.

    The row count decides whether a batch is worth a training; a count that
    disagrees with the file is a wrong event, not new data.

    >>> ref = DatasetRef(uri="file:///b.parquet", sha256="a" * 64, rows=3)
    >>> check_announced_rows(ref, pd.DataFrame({"x": [1, 2, 3]}))
    >>> check_announced_rows(ref, pd.DataFrame({"x": [1, 2]}))
    Traceback (most recent call last):
    ...
    shared.errors.InvalidInputError: dataset file:///b.parquet has 2 rows; its event announced 3
    """
    if len(frame) != ref.rows:
        raise InvalidInputError(
            f"dataset {ref.uri} has {len(frame)} rows; its event announced {ref.rows}"
        )


def column_misfit(columns: Sequence[str] | None, spec: ModelSpec) -> str | None:
    """Which of the spec's columns a batch lacks, and which of its own the spec does not know.

    None when nothing is missing (or the columns are unknown): extra columns alone
    are dropped, not an error.

    >>> from shared.spec import FeatureSpec
    >>> x = FeatureSpec(name="x", type="numeric")
    >>> spec = ModelSpec(name="m", label="y", classes=("a", "b"), features=(x,))
    >>> column_misfit(["x", "y", "note"], spec) is None
    True
    >>> column_misfit(["amount", "y"], spec)
    "missing columns ['x']; columns the spec does not know: ['amount']"
    """
    if columns is None:
        return None
    wanted = [*spec.feature_names, spec.label]
    missing = [c for c in wanted if c not in columns]
    if not missing:
        return None
    unknown = [c for c in columns if c not in wanted]
    known = f"; columns the spec does not know: {unknown}" if unknown else ""
    return f"missing columns {missing}{known}"


def combine_batches(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack validated batches into one training frame."""
    if not frames:
        raise InvalidInputError("no batches to train on")
    return pd.concat(frames, ignore_index=True)


def training_frame(
    recent: Sequence[pd.DataFrame], older: Sequence[pd.DataFrame], fraction: float, seed: int
) -> pd.DataFrame:
    """The recent batches whole, plus a seeded ``fraction`` of the older batches' rows.

    >>> new, old = pd.DataFrame({"x": range(10)}), pd.DataFrame({"x": range(100, 200)})
    >>> len(training_frame([new], [old], 0.2, seed=1))
    30
    """
    frame = combine_batches(recent)
    if not older or fraction <= 0:
        return frame
    sample = pd.concat(older, ignore_index=True).sample(frac=fraction, random_state=seed)
    return pd.concat([frame, sample], ignore_index=True)


def make_classifier(algorithm: str, seed: int, device: str = "auto") -> Any:
    """A fresh, unfitted classifier for ``algorithm``."""
    try:
        return CLASSIFIERS[algorithm](seed, device)
    except KeyError:
        raise InvalidInputError(
            f"unknown algorithm {algorithm!r}; known: {sorted(CLASSIFIERS)}"
        ) from None


def build_pipeline(spec: ModelSpec, estimator: Any) -> Pipeline:
    """Scale numeric features, one-hot the categorical ones, then classify (or regress).

    Serving relies on this shape: ``pipeline[0]`` a ``TabularEncoder``, ``pipeline[-1]``
    the estimator (step ``classifier``, or ``regressor`` for a regression spec).
    """
    features = TabularEncoder(spec.numeric_features, spec.categorical_features)
    step = "regressor" if spec.is_regression else "classifier"
    return Pipeline([("features", features), (step, estimator)])


def split(
    frame: pd.DataFrame, spec: ModelSpec, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Seeded train/validation split, stratified on the label when every class allows it."""
    if len(frame) < MIN_TRAINING_ROWS:
        raise InvalidInputError(f"{len(frame)} rows; at least {MIN_TRAINING_ROWS} are needed")
    labels = frame[spec.label].astype(str)
    if labels.nunique() < 2:
        raise InvalidInputError(f"only one class ({labels.iloc[0]!r}) in the training data")
    # Stratifying needs two rows of every class; rare classes fall back to a plain shuffle.
    stratify = labels if labels.value_counts().min() >= 2 else None
    x_train, x_val, y_train, y_val = train_test_split(
        frame[list(spec.feature_names)],
        labels,
        test_size=fraction,
        random_state=seed,
        stratify=stratify,
    )
    return x_train, x_val, y_train, y_val


def evaluate(pipeline: Pipeline, x_val: pd.DataFrame, y_val: pd.Series) -> ModelMetrics:
    """Accuracy, macro F1, ROC AUC, log loss and calibration error on held-out rows."""
    probabilities = pipeline.predict_proba(x_val)
    classes = np.asarray(pipeline.classes_).astype(str)
    predicted = classes[np.argmax(probabilities, axis=1)]
    truth = np.asarray(y_val).astype(str)
    return ModelMetrics(
        accuracy=float(accuracy_score(truth, predicted)),
        macro_f1=float(f1_score(truth, predicted, average="macro", zero_division=0)),
        log_loss=float(log_loss(truth, probabilities, labels=classes)),
        validation_rows=len(truth),
        roc_auc=_roc_auc(truth, probabilities, classes),
        calibration_error=calibration_error(truth, probabilities, classes),
    )


def calibration_error(truth: Any, probabilities: Any, classes: Any, bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence, over equal-width bins.

    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    >>> round(calibration_error(np.array(["a", "a", "b", "a"]), p, np.array(["a", "b"])), 3)
    0.3
    """
    confidence = probabilities.max(axis=1)
    correct = classes[np.argmax(probabilities, axis=1)] == truth
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for b in np.unique(edges):
        in_bin = edges == b
        error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def _roc_auc(truth: Any, probabilities: Any, classes: Any) -> float:
    """One-vs-rest macro ROC AUC (NaN when a class is absent from the held-out rows)."""
    if len(set(truth)) < len(classes):
        return float("nan")
    if len(classes) == 2:
        return float(roc_auc_score(truth == classes[1], probabilities[:, 1]))
    return float(roc_auc_score(truth, probabilities, labels=classes, multi_class="ovr"))


def is_better(metric: str, candidate: ModelMetrics, best: ModelMetrics) -> bool:
    """Whether ``candidate`` beats ``best`` on ``metric`` (direction-aware)."""
    new, old = float(getattr(candidate, metric)), float(getattr(best, metric))
    return new < old if metric in LOWER_IS_BETTER else new > old


def train(frame: pd.DataFrame, spec: ModelSpec, config: TrainingConfig) -> TrainedModel:
    """Fit every candidate on a stratified share of ``frame``; keep the best on the rest."""
    if spec.is_regression:
        # Imported here: the regression module builds on this one's types.
        from services.trainer.regression import train_regression

        return train_regression(frame, spec, config)
    x_train, x_val, y_train, y_val = split(frame, spec, config.validation_fraction, config.seed)
    fitted = [
        _fit_candidate(name, spec, config, x_train, y_train, x_val, y_val)
        for name in config.candidates
    ]
    if not fitted:
        raise InvalidInputError("no candidate algorithms configured")
    best = fitted[0]
    for candidate in fitted[1:]:
        if is_better(config.selection_metric, candidate.metrics, best.metrics):
            best = candidate
    return _trained(best, fitted, config, x_train, x_val, y_val)


@dataclass(frozen=True)
class _Candidate:
    name: str
    pipeline: Pipeline
    metrics: ModelMetrics
    seconds: float


def _fit_candidate(
    name: str,
    spec: ModelSpec,
    config: TrainingConfig,
    x_train: pd.DataFrame,
    y_train: pd.Series,
    x_val: pd.DataFrame,
    y_val: pd.Series,
) -> _Candidate:
    pipeline = build_pipeline(spec, make_classifier(name, config.seed, config.device))
    started = time.perf_counter()
    pipeline.fit(x_train, y_train)
    seconds = time.perf_counter() - started
    return _Candidate(name, pipeline, evaluate(pipeline, x_val, y_val), seconds)


def _trained(
    best: _Candidate,
    fitted: list[_Candidate],
    config: TrainingConfig,
    x_train: pd.DataFrame,
    x_val: pd.DataFrame,
    y_val: pd.Series,
) -> TrainedModel:
    reference = x_train.sample(
        n=min(config.reference_rows, len(x_train)), random_state=config.seed
    ).reset_index(drop=True)
    classes = [str(c) for c in best.pipeline.classes_]
    predicted = best.pipeline.predict(x_val)
    confusion = confusion_matrix(
        np.asarray(y_val).astype(str), predicted.astype(str), labels=classes
    )
    report = getattr(best.pipeline[-1], "fit_report_", None)
    return TrainedModel(
        pipeline=best.pipeline,
        algorithm=best.name,
        metrics=best.metrics,
        train_rows=len(x_train),
        reference=reference,
        params=_params(config, best.name, len(x_train), len(x_val)),
        candidates={c.name: c.metrics for c in fitted},
        holdout=x_val.assign(**{str(y_val.name): np.asarray(y_val).astype(str)}).reset_index(
            drop=True
        ),
        confusion=confusion.tolist(),
        fit_seconds=best.seconds,
        device=str(report["device"]) if report is not None else "cpu",
    )


def _params(
    config: TrainingConfig, algorithm: str, train_rows: int, validation_rows: int
) -> dict[str, str | int | float]:
    return {
        "algorithm": algorithm,
        "candidates": ",".join(config.candidates),
        "selection_metric": config.selection_metric,
        "validation_fraction": config.validation_fraction,
        "older_fraction": config.older_fraction,
        "seed": config.seed,
        "train_rows": train_rows,
        "validation_rows": validation_rows,
    }
