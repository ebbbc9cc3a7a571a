"""Trainer settings, read from ``TRAINER_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.trainer.core import RegressionMetric, SelectionMetric, TrainingConfig
from shared.settings import SERVICE_PORTS, BaseServiceSettings

Algorithm = Literal["logistic_regression", "hist_gradient_boosting", "torch_mlp"]


class Settings(BaseServiceSettings):
    """How the trainer trains and how long it waits for a busy model."""

    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore", frozen=True)

    port: int = SERVICE_PORTS["trainer"]
    """HTTP port of the trainer (health, readiness, metrics)."""
    window_batches: int = Field(5, ge=1)
    """How many of the most recent batches (the new one included) a model is trained on."""
    older_batches: int = Field(20, ge=0)
    """Batches before the window whose rows are sampled into the training set."""
    older_fraction: float = Field(0.2, ge=0, le=1)
    """Share of those older batches' rows that joins the window (seeded sample)."""
    history_batches: int = Field(50, ge=1)
    """How many batch references are remembered per model."""
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of rows held out to compute validation metrics (stratified for a classifier)."""
    seed: int = 42
    """Seed of the train/validation split and of the estimators."""
    candidates: tuple[Algorithm, ...] = ("logistic_regression", "torch_mlp")
    """Candidates tried (env: JSON list; also "hist_gradient_boosting"); the best is published.

    Each name is a model family: a regression model gets the family's regressor
    (logistic_regression → ridge; hist_gradient_boosting and torch_mlp as named).
    Histogram gradient boosting is opt-in: its OpenMP single-row prediction stalls
    when CPUs are contended (p50 98 ms measured on a loaded 2-core host).
    """
    selection_metric: SelectionMetric = "macro_f1"
    """Validation metric that picks the published classifier (log loss: lower is better)."""
    regression_selection_metric: RegressionMetric = "rmse"
    """Validation metric that picks the published regressor (rmse, mae: lower is better; r2)."""
    device: str = "auto"
    """Torch device of the MLP: auto (CUDA when present), cpu or cuda[:n]."""
    reference_rows: int = Field(10_000, ge=1)
    """Most training rows logged as the monitor's drift reference."""
    lock_ttl_s: float = Field(600.0, gt=0)
    """Expiry of the per-model training lock, so a crashed trainer cannot hold it forever."""
    lock_wait_s: float = Field(240.0, gt=0)
    """How long a trigger waits for a busy model; below Kafka's max.poll.interval (300 s)."""
    coalesce_window_s: float = Field(1.0, ge=0)
    """Data-arrived events this close together (seconds of quiet) become one training."""
    coalesce_max_wait_s: float = Field(30.0, gt=0)
    """Longest a pending arrival waits for the burst to end before training anyway."""
    min_new_rows: int = Field(500, ge=1)
    """Fewest new rows (summed over pending batches) that start a data-triggered training.

    A smaller batch is recorded and waits, pending, until later batches add up to this;
    drift and manual retrains include it at once. Each data retrain yields a challenger
    and an experiment, which a handful of rows does not justify.
    """
    retrain_every_s: float | None = Field(None, gt=0)
    """Also retrain on this period (trigger "schedule"); unset: no schedule."""
    scheduler_tick_s: float = Field(0.25, gt=0)
    """How often pending arrivals are checked."""
    mlflow_max_retries: int = Field(2, ge=0)
    """HTTP retries of MLflow calls, so a dead server fails in seconds and the trigger waits."""
    mlflow_timeout_s: int = Field(30, ge=1)
    """Timeout of one MLflow HTTP request, in seconds."""

    def to_config(self) -> TrainingConfig:
        """The training choices the handlers work with."""
        return TrainingConfig(
            candidates=self.candidates,
            selection_metric=self.selection_metric,
            regression_selection_metric=self.regression_selection_metric,
            device=self.device,
            older_fraction=self.older_fraction,
            validation_fraction=self.validation_fraction,
            seed=self.seed,
            reference_rows=self.reference_rows,
        )
