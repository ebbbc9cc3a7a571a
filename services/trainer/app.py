"""Composition root of the trainer: settings, adapters, handlers, the app."""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.trainer.adapters import (
    FileBatchSource,
    MlflowModelStore,
    RedisBatchHistory,
    RedisPendingTriggers,
    RedisTrainingLock,
    adopt_legacy_keys,
)
from services.trainer.coalesce import CoalescePolicy
from services.trainer.handlers import TrainerHandlers, TrainerPorts, register
from services.trainer.metrics import TrainerMetrics
from services.trainer.recovery import TrainerStateGuards, mlflow_last_trained
from services.trainer.scheduler import PendingTrainingScheduler
from services.trainer.settings import Settings
from shared.catalog import ModelCatalog
from shared.mlflow_specs import MlflowSpecSource
from shared.runtime import Hook, build_runtime, mlflow_check, serve, service_app
from shared.spec import load_spec

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, name: str = "trainer") -> FastAPI:
    """Build the trainer (connects nothing until the app starts).

    ``name`` names its consumer group and idempotency markers (tests use their own).
    """
    settings = settings or Settings()
    _fail_fast_on_mlflow_outages(settings)
    runtime = build_runtime(name, settings)
    default_spec = load_spec(settings.model_spec_path)
    catalog = ModelCatalog(
        MlflowSpecSource(settings.mlflow_tracking_uri), settings.model_name, default_spec
    )
    history = RedisBatchHistory(runtime.redis, settings.history_batches)
    ports = TrainerPorts(
        batches=FileBatchSource(),
        history=history,
        pending=RedisPendingTriggers(runtime.redis),
        lock=RedisTrainingLock(runtime.redis, settings.lock_ttl_s, settings.lock_wait_s),
        store=MlflowModelStore(settings.mlflow_tracking_uri, default_spec.label),
        publisher=runtime.publisher,
    )
    handlers = TrainerHandlers(
        ports=ports,
        catalog=catalog,
        config=settings.to_config(),
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
    guard = TrainerStateGuards(
        runtime.redis,
        history,
        mlflow_last_trained(settings.mlflow_tracking_uri),
        runtime.registry,
        catalog.names,
    )
    return service_app(
        runtime,
        checks={"mlflow": mlflow_check(settings.mlflow_tracking_uri), "state": guard.ready},
        on_startup=[
            _adopt_legacy_keys(runtime.redis, settings.model_name),
            guard.start,
            scheduler.start,
        ],
        on_shutdown=[scheduler.stop, guard.stop],
        description="Trains a candidate model when data arrives or drift is detected.",
        details=guard.details,
    )


def _adopt_legacy_keys(redis: Redis, model_name: str) -> Hook:
    """Before anything consumes: the default model's state moves to its hash-tagged keys."""

    async def adopt() -> None:
        try:
            moved = await adopt_legacy_keys(redis, model_name)
        except RedisError as error:  # left where it is: the next start moves it
            log.warning("legacy trainer keys not moved", extra={"error": repr(error)})
            return
        if moved:
            log.info("legacy trainer keys moved", extra={"model": model_name, "kinds": moved})

    return adopt


def _fail_fast_on_mlflow_outages(settings: Settings) -> None:
    # MLflow's defaults (7 retries, 120 s) hold a trigger for minutes before it is retried.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.mlflow_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def main() -> None:
    """Run the trainer's HTTP server and consumers."""
    settings = Settings()
    serve(create_app(settings), settings)
