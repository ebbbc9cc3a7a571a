"""Training logic: data versions, the feature pipeline, the split, fitting and validation metrics.

Pure: frames in, fitted pipeline and numbers out. No broker, MLflow, Redis or files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from shared.errors import InvalidInputError
from shared.events import ModelMetrics
from shared.spec import ModelSpec

#: Fewest rows worth training on: below this the held-out metrics mean nothing.
MIN_TRAINING_ROWS = 20

ClassifierFactory = Callable[[int], Any]

#: Classifier factories by algorithm name, each taking the seed. More candidates come later.
CLASSIFIERS: dict[str, ClassifierFactory] = {
    "logistic_regression": lambda seed: LogisticRegression(max_iter=1000, random_state=seed),
}


@dataclass(frozen=True)
class TrainingConfig:
    """How to split and what to fit."""

    algorithm: str = "logistic_regression"
    validation_fraction: float = 0.2
    seed: int = 42
    reference_rows: int = 10_000


@dataclass(frozen=True)
class TrainedModel:
    """A fitted pipeline with its validation metrics and what MLflow should record about it."""

    pipeline: Pipeline
    algorithm: str
    metrics: ModelMetrics
    train_rows: int
    reference: pd.DataFrame = field(repr=False)
    params: dict[str, str | int | float] = field(default_factory=dict)


def data_version(hashes: Iterable[str]) -> str:
    """Hash of a set of batch hashes: independent of their order.

    >>> data_version(["b" * 64, "a" * 64]) == data_version(["a" * 64, "b" * 64])
    True
    """
    joined = "\n".join(sorted(set(hashes)))
    return hashlib.sha256(joined.encode()).hexdigest()


def combine_batches(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack validated batches into one training frame."""
    if not frames:
        raise InvalidInputError("no batches to train on")
    return pd.concat(frames, ignore_index=True)


def make_classifier(algorithm: str, seed: int) -> Any:
    """A fresh, unfitted classifier for ``algorithm``."""
    try:
        return CLASSIFIERS[algorithm](seed)
    except KeyError:
        raise InvalidInputError(
            f"unknown algorithm {algorithm!r}; known: {sorted(CLASSIFIERS)}"
        ) from None


def build_pipeline(spec: ModelSpec, classifier: Any) -> Pipeline:
    """Scale numeric features, one-hot the categorical ones, then classify."""
    features = ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(spec.numeric_features)),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore"),
                list(spec.categorical_features),
            ),
        ]
    )
    return Pipeline([("features", features), ("classifier", classifier)])


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
    """Accuracy, macro F1 and log loss of ``pipeline`` on held-out rows."""
    predicted = pipeline.predict(x_val)
    probabilities = pipeline.predict_proba(x_val)
    return ModelMetrics(
        accuracy=float(accuracy_score(y_val, predicted)),
        macro_f1=float(f1_score(y_val, predicted, average="macro", zero_division=0)),
        log_loss=float(log_loss(y_val, probabilities, labels=pipeline.classes_)),
        validation_rows=len(y_val),
    )


def train(frame: pd.DataFrame, spec: ModelSpec, config: TrainingConfig) -> TrainedModel:
    """Fit the spec's pipeline on a stratified share of ``frame``; measure it on the rest."""
    x_train, x_val, y_train, y_val = split(frame, spec, config.validation_fraction, config.seed)
    pipeline = build_pipeline(spec, make_classifier(config.algorithm, config.seed))
    pipeline.fit(x_train, y_train)
    reference = x_train.sample(
        n=min(config.reference_rows, len(x_train)), random_state=config.seed
    ).reset_index(drop=True)
    return TrainedModel(
        pipeline=pipeline,
        algorithm=config.algorithm,
        metrics=evaluate(pipeline, x_val, y_val),
        train_rows=len(x_train),
        reference=reference,
        params=_params(config, len(x_train), len(x_val)),
    )


def _params(
    config: TrainingConfig, train_rows: int, validation_rows: int
) -> dict[str, str | int | float]:
    return {
        "algorithm": config.algorithm,
        "validation_fraction": config.validation_fraction,
        "seed": config.seed,
        "train_rows": train_rows,
        "validation_rows": validation_rows,
    }
