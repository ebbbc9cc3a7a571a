"""Composition root of the trainer: settings, adapters, handlers, the app."""

from __future__ import annotations

import os

from fastapi import FastAPI

from services.trainer.adapters import (
    FileBatchSource,
    MlflowModelStore,
    RedisBatchHistory,
    RedisPendingTriggers,
    RedisTrainingLock,
)
from services.trainer.coalesce import CoalescePolicy
from services.trainer.core import TrainingConfig
from services.trainer.handlers import TrainerHandlers, TrainerPorts, register
from services.trainer.metrics import TrainerMetrics
from services.trainer.recovery import TrainerStateGuard, mlflow_last_trained
from services.trainer.scheduler import PendingTrainingScheduler
from services.trainer.settings import Settings
from shared.runtime import build_runtime, mlflow_check, serve, service_app
from shared.spec import load_spec


def create_app(settings: Settings | None = None, name: str = "trainer") -> FastAPI:
    """Build the trainer (connects nothing until the app starts).

    ``name`` names its consumer group and idempotency markers (tests use their own).
    """
    settings = settings or Settings()
    _fail_fast_on_mlflow_outages(settings)
    runtime = build_runtime(name, settings)
    spec = load_spec(settings.model_spec_path)
    history = RedisBatchHistory(runtime.redis, settings.history_batches)
    ports = TrainerPorts(
        batches=FileBatchSource(spec),
        history=history,
        pending=RedisPendingTriggers(runtime.redis),
        lock=RedisTrainingLock(runtime.redis, settings.lock_ttl_s, settings.lock_wait_s),
        store=MlflowModelStore(settings.mlflow_tracking_uri, spec.label),
        publisher=runtime.publisher,
    )
    handlers = TrainerHandlers(
        ports=ports,
        spec=spec,
        config=training_config(settings),
        model_name=settings.model_name,
        window_batches=settings.window_batches,
        older_batches=settings.older_batches,
        metrics=TrainerMetrics.create(runtime.registry),
        policy=CoalescePolicy(
            settings.coalesce_window_s, settings.coalesce_max_wait_s, settings.min_new_rows
        ),
    )
    register(runtime.consumer, handlers)
    scheduler = PendingTrainingScheduler(
        handlers, tick_s=settings.scheduler_tick_s, every_s=settings.retrain_every_s
    )
    guard = TrainerStateGuard(
        runtime.redis,
        history,
        mlflow_last_trained(settings.mlflow_tracking_uri),
        runtime.registry,
        settings.model_name,
    )
    return service_app(
        runtime,
        checks={"mlflow": mlflow_check(settings.mlflow_tracking_uri), "state": guard.ready},
        on_startup=[guard.start, scheduler.start],
        on_shutdown=[scheduler.stop, guard.stop],
        description="Trains a candidate model when data arrives or drift is detected.",
        details=guard.details,
    )


def training_config(settings: Settings) -> TrainingConfig:
    """The training choices from the settings."""
    return TrainingConfig(
        candidates=settings.candidates,
        selection_metric=settings.selection_metric,
        device=settings.device,
        older_fraction=settings.older_fraction,
        validation_fraction=settings.validation_fraction,
        seed=settings.seed,
        reference_rows=settings.reference_rows,
    )


def _fail_fast_on_mlflow_outages(settings: Settings) -> None:
    # MLflow's defaults (7 retries, 120 s) hold a trigger for minutes before it is retried.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.mlflow_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def main() -> None:
    """Run the trainer's HTTP server and consumers."""
    settings = Settings()
    serve(create_app(settings), settings)
