"""Regression training: regressor candidates, a plain split, RMSE / MAE / R², the pick.

Pure like ``core`` (which hands a regression spec here): frames in, a fitted
pipeline and numbers out, as the same ``TrainedModel`` a classifier gives.

One ``TRAINER_CANDIDATES`` setting serves both tasks: each configured name is a
model family, and a regression model gets that family's regressor
(``logistic_regression`` → ``ridge``; ``hist_gradient_boosting`` and ``torch_mlp``
keep their names). The published ``algorithm`` is the regressor's name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from services.trainer.core import (
    MIN_TRAINING_ROWS,
    TrainedModel,
    TrainingConfig,
    build_pipeline,
    is_better,
)
from shared.datasets import label_problem
from shared.errors import InvalidInputError
from shared.events import ModelMetrics
from shared.spec import ModelSpec
from shared.torch_mlp import TorchMLPRegressor

#: How a regressor is chosen for a regression model: the lowest RMSE unless configured.
RegressionMetric = Literal["rmse", "mae", "r2"]


@dataclass(frozen=True)
class Regressor:
    """A regressor family member: its published name and a factory (seed, torch device)."""

    name: str
    make: Callable[[int, str], Any]


#: The regressor of each configured candidate family.
REGRESSORS: dict[str, Regressor] = {
    "logistic_regression": Regressor("ridge", lambda _seed, _device: Ridge(alpha=1.0)),
    "hist_gradient_boosting": Regressor(
        "hist_gradient_boosting",
        lambda seed, _: HistGradientBoostingRegressor(
            max_iter=200, early_stopping=True, random_state=seed
        ),
    ),
    "torch_mlp": Regressor(
        "torch_mlp", lambda seed, device: TorchMLPRegressor(seed=seed, device=device)
    ),
}


def regressor_for(candidate: str) -> Regressor:
    """The regressor standing in for configured ``candidate`` (InvalidInputError if unknown).

    >>> regressor_for("logistic_regression").name
    'ridge'
    """
    try:
        return REGRESSORS[candidate]
    except KeyError:
        raise InvalidInputError(
            f"unknown algorithm {candidate!r}; known: {sorted(REGRESSORS)}"
        ) from None


def split_regression(
    frame: pd.DataFrame, spec: ModelSpec, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Seeded shuffled train/validation split with the label as floats (nothing to stratify)."""
    if len(frame) < MIN_TRAINING_ROWS:
        raise InvalidInputError(f"{len(frame)} rows; at least {MIN_TRAINING_ROWS} are needed")
    if problem := label_problem(frame[spec.label], spec):
        raise InvalidInputError(problem)
    values = frame[spec.label].astype(np.float64)
    if values.nunique() < 2:
        raise InvalidInputError(f"every {spec.label} is {values.iloc[0]}: nothing to learn")
    x_train, x_val, y_train, y_val = train_test_split(
        frame[list(spec.feature_names)], values, test_size=fraction, random_state=seed
    )
    return x_train, x_val, y_train, y_val


def evaluate_regression(pipeline: Any, x_val: pd.DataFrame, y_val: pd.Series) -> ModelMetrics:
    """RMSE, MAE and R² of ``pipeline``'s predictions on held-out rows.

    >>> from sklearn.dummy import DummyRegressor
    >>> x = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    >>> y = pd.Series([1.0, 2.0, 3.0, 6.0])
    >>> m = evaluate_regression(DummyRegressor().fit(x, y), x, y)
    >>> round(m.rmse, 3), round(m.mae, 3), m.r2, m.validation_rows
    (1.871, 1.5, 0.0, 4)
    """
    predicted = np.asarray(pipeline.predict(x_val), dtype=np.float64)
    if not np.isfinite(predicted).all():
        raise FloatingPointError("the model predicts non-finite values on the validation rows")
    truth = np.asarray(y_val, dtype=np.float64)
    return ModelMetrics(
        rmse=float(np.sqrt(mean_squared_error(truth, predicted))),
        mae=float(mean_absolute_error(truth, predicted)),
        r2=float(r2_score(truth, predicted)),
        validation_rows=len(truth),
    )


@dataclass(frozen=True)
class _Fitted:
    name: str
    pipeline: Pipeline
    metrics: ModelMetrics
    seconds: float


def train_regression(frame: pd.DataFrame, spec: ModelSpec, config: TrainingConfig) -> TrainedModel:
    """Fit every candidate family's regressor; keep the best by the regression metric."""
    x_train, x_val, y_train, y_val = split_regression(
        frame, spec, config.validation_fraction, config.seed
    )
    fitted = [
        _fit(regressor_for(name), spec, config, (x_train, y_train), (x_val, y_val))
        for name in config.candidates
    ]
    if not fitted:
        raise InvalidInputError("no candidate algorithms configured")
    best = fitted[0]
    for candidate in fitted[1:]:
        if is_better(config.regression_selection_metric, candidate.metrics, best.metrics):
            best = candidate
    return _trained(best, fitted, config, (x_train, x_val, y_val))


def _fit(
    regressor: Regressor,
    spec: ModelSpec,
    config: TrainingConfig,
    train: tuple[pd.DataFrame, pd.Series],
    validation: tuple[pd.DataFrame, pd.Series],
) -> _Fitted:
    pipeline = build_pipeline(spec, regressor.make(config.seed, config.device))
    started = time.perf_counter()
    pipeline.fit(*train)
    seconds = time.perf_counter() - started
    return _Fitted(regressor.name, pipeline, evaluate_regression(pipeline, *validation), seconds)


def _trained(
    best: _Fitted,
    fitted: list[_Fitted],
    config: TrainingConfig,
    rows: tuple[pd.DataFrame, pd.DataFrame, pd.Series],
) -> TrainedModel:
    x_train, x_val, y_val = rows
    reference = x_train.sample(
        n=min(config.reference_rows, len(x_train)), random_state=config.seed
    ).reset_index(drop=True)
    report = getattr(best.pipeline[-1], "fit_report_", None)
    return TrainedModel(
        pipeline=best.pipeline,
        algorithm=best.name,
        metrics=best.metrics,
        train_rows=len(x_train),
        reference=reference,
        params={
            "task": "regression",
            "algorithm": best.name,
            "candidates": ",".join(f.name for f in fitted),
            "selection_metric": config.regression_selection_metric,
            "validation_fraction": config.validation_fraction,
            "older_fraction": config.older_fraction,
            "seed": config.seed,
            "train_rows": len(x_train),
            "validation_rows": len(x_val),
        },
        candidates={f.name: f.metrics for f in fitted},
        holdout=x_val.assign(**{str(y_val.name): y_val.to_numpy()}).reset_index(drop=True),
        fit_seconds=best.seconds,
        device=str(report["device"]) if report is not None else "cpu",
    )
