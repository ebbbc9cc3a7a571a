"""Composition root of the monitor."""

from __future__ import annotations

from dataclasses import replace

from fastapi import FastAPI

from services.monitor.adapters import (
    MlflowReferenceStore,
    NoMarkers,
    RedisRoutingState,
    RedisStateStore,
)
from services.monitor.handlers import DriftMonitor
from services.monitor.metrics import MonitorMetrics
from services.monitor.settings import Settings
from shared.batch_messaging import subscribe_batch
from shared.events import FeedbackReceived, ModelPromoted, ModelRolledBack, PredictionLogged, Topic
from shared.messaging import subscribe
from shared.runtime import build_runtime, mlflow_check, serve, service_app
from shared.spec import load_spec


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the monitor: drift windows over prediction-logged, drift-detected out."""
    settings = settings or Settings()
    runtime = build_runtime("monitor", settings)
    spec = load_spec(settings.model_spec_path)
    monitor = DriftMonitor(
        settings=settings,
        references=MlflowReferenceStore(settings.mlflow_tracking_uri, spec),
        publisher=runtime.publisher,
        metrics=MonitorMetrics.create(runtime.registry),
        states=RedisStateStore(runtime.redis),
        routing=RedisRoutingState(runtime.redis),
    )
    subscribe_batch(
        replace(runtime.consumer, processed=NoMarkers()),
        Topic.PREDICTION_LOGGED,
        PredictionLogged,
        monitor.on_predictions,
        max_records=settings.batch_size,
        batch_timeout_ms=settings.batch_timeout_ms,
    )
    subscribe(runtime.consumer, Topic.FEEDBACK_RECEIVED, FeedbackReceived, monitor.on_feedback)
    subscribe(runtime.consumer, Topic.MODEL_PROMOTED, ModelPromoted, monitor.on_champion_changed)
    subscribe(
        runtime.consumer, Topic.MODEL_ROLLED_BACK, ModelRolledBack, monitor.on_champion_changed
    )
    return service_app(
        runtime,
        checks={"mlflow": mlflow_check(settings.mlflow_tracking_uri)},
        description="Data drift (KS, χ²) and concept drift (accuracy CUSUM) against the champion.",
    )


def main() -> None:
    """Run the monitor service."""
    settings = Settings()
    serve(create_app(settings), settings)
