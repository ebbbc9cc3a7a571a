"""Composition root of the trainer: settings, adapters, handlers, the app."""

from __future__ import annotations

from fastapi import FastAPI

from services.trainer.adapters import (
    FileBatchSource,
    MlflowModelStore,
    RedisBatchHistory,
    RedisTrainingLock,
)
from services.trainer.core import TrainingConfig
from services.trainer.handlers import TrainerHandlers, TrainerPorts, register
from services.trainer.metrics import TrainerMetrics
from services.trainer.settings import Settings
from shared.runtime import build_runtime, mlflow_check, serve, service_app
from shared.spec import load_spec


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the trainer (connects nothing until the app starts)."""
    settings = settings or Settings()
    runtime = build_runtime("trainer", settings)
    spec = load_spec(settings.model_spec_path)
    ports = TrainerPorts(
        batches=FileBatchSource(spec),
        history=RedisBatchHistory(runtime.redis, settings.history_batches),
        lock=RedisTrainingLock(runtime.redis, settings.lock_ttl_s, settings.lock_wait_s),
        store=MlflowModelStore(settings.mlflow_tracking_uri),
        publisher=runtime.publisher,
    )
    handlers = TrainerHandlers(
        ports=ports,
        spec=spec,
        config=TrainingConfig(
            algorithm=settings.algorithm,
            validation_fraction=settings.validation_fraction,
            seed=settings.seed,
            reference_rows=settings.reference_rows,
        ),
        model_name=settings.model_name,
        window_batches=settings.window_batches,
        metrics=TrainerMetrics.create(runtime.registry),
    )
    register(runtime.consumer, handlers)
    return service_app(
        runtime,
        checks={"mlflow": mlflow_check(settings.mlflow_tracking_uri)},
        description="Trains a candidate model when data arrives or drift is detected.",
    )


def main() -> None:
    """Run the trainer's HTTP server and consumers."""
    settings = Settings()
    serve(create_app(settings), settings)
