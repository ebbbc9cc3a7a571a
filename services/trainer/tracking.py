"""What each training run records in MLflow beyond params and metrics: images, data, code."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers

import mlflow
import pandas as pd
from matplotlib import pyplot as plt
from mlflow.data.pandas_dataset import from_pandas

from services.trainer.core import TrainedModel
from services.trainer.ports import RunContext


def code_version() -> str:
    """The git commit of the running code (``FLYWHEEL_GIT_COMMIT`` wins), or ``"unknown"``."""
    if commit := os.environ.get("FLYWHEEL_GIT_COMMIT"):
        return commit
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def run_metrics(model: TrainedModel) -> dict[str, float]:
    """The chosen model's metrics, every candidate's, and the fit's time and throughput."""
    values: dict[str, Any] = model.metrics.model_dump()
    values["train_rows"] = model.train_rows
    values["training_seconds"] = model.fit_seconds
    if model.fit_seconds > 0:
        values["examples_per_s"] = model.train_rows / model.fit_seconds
    for name, metrics in model.candidates.items():
        for key, value in metrics.model_dump().items():
            values[f"candidate.{name}.{key}"] = value
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


def log_confusion_matrix(model: TrainedModel) -> None:
    """The validation confusion matrix as ``confusion_matrix.png`` (rows: truth)."""
    classes = [str(c) for c in model.pipeline.classes_]
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.imshow(model.confusion, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45)
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i, row in enumerate(model.confusion):
        for j, count in enumerate(row):
            axes.text(j, i, str(count), ha="center", va="center")
    axes.set_title(f"{model.algorithm} on {model.metrics.validation_rows} held-out rows")
    figure.tight_layout()
    mlflow.log_figure(figure, "confusion_matrix.png")
    plt.close(figure)


def log_predicted_vs_true(model: TrainedModel, label: str) -> None:
    """A regressor's held-out predictions against the truth as ``predicted_vs_true.png``."""
    truth = model.holdout[label].to_numpy(dtype=float)
    predicted = model.pipeline.predict(model.holdout.drop(columns=[label]))
    low, high = float(min(truth.min(), predicted.min())), float(max(truth.max(), predicted.max()))
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.scatter(truth, predicted, s=6, alpha=0.5)
    axes.plot([low, high], [low, high], color="grey", linewidth=1)  # a perfect model's line
    axes.set_xlabel(f"true {label}")
    axes.set_ylabel("predicted")
    axes.set_title(f"{model.algorithm}: RMSE {model.metrics.rmse:.3g}, R² {model.metrics.r2:.2f}")
    figure.tight_layout()
    mlflow.log_figure(figure, "predicted_vs_true.png")
    plt.close(figure)


def log_datasets(model: TrainedModel, context: RunContext, label: str) -> None:
    """The training window and the holdout as MLflow dataset inputs, named by data version."""
    source = context.datasets[-1].uri if context.datasets else "unknown"
    name = f"{context.model_name}-{context.data_version[:12]}"
    training = from_pandas(model.reference, source=source, name=name)
    mlflow.log_input(training, context="training")
    if not model.holdout.empty:
        holdout = from_pandas(model.holdout, source=source, name=f"{name}-holdout", targets=label)
        mlflow.log_input(holdout, context="validation")


def log_holdout(holdout: pd.DataFrame) -> None:
    """The held-out rows with labels: the fresh holdout the registry's gates compare on."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "validation.parquet"
        holdout.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="holdout")
