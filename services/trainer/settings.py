"""Trainer settings, read from ``TRAINER_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import SERVICE_PORTS, BaseServiceSettings


class Settings(BaseServiceSettings):
    """How the trainer trains and how long it waits for a busy model."""

    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore", frozen=True)

    port: int = SERVICE_PORTS["trainer"]
    """HTTP port of the trainer (health, readiness, metrics)."""
    window_batches: int = Field(5, ge=1)
    """How many of the most recent batches (the new one included) a model is trained on."""
    history_batches: int = Field(50, ge=1)
    """How many batch references are remembered per model."""
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of rows held out (stratified) to compute validation metrics."""
    seed: int = 42
    """Seed of the train/validation split and of the classifier."""
    algorithm: Literal["logistic_regression"] = "logistic_regression"
    """Classifier at the end of the pipeline."""
    reference_rows: int = Field(10_000, ge=1)
    """Most training rows logged as the monitor's drift reference."""
    lock_ttl_s: float = Field(600.0, gt=0)
    """Expiry of the per-model training lock, so a crashed trainer cannot hold it forever."""
    lock_wait_s: float = Field(240.0, gt=0)
    """How long a trigger waits for a busy model; below Kafka's max.poll.interval (300 s)."""
