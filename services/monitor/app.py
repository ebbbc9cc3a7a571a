"""Composition root of the monitor."""

from __future__ import annotations

from fastapi import FastAPI

from services.monitor.adapters import MlflowReferenceStore
from services.monitor.handlers import DriftMonitor
from services.monitor.metrics import MonitorMetrics
from services.monitor.settings import Settings
from shared.events import PredictionLogged, Topic
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
    )
    subscribe(runtime.consumer, Topic.PREDICTION_LOGGED, PredictionLogged, monitor.on_prediction)
    return service_app(
        runtime,
        checks={"mlflow": mlflow_check(settings.mlflow_tracking_uri)},
        description="KS drift of live traffic against the champion training data.",
    )


def main() -> None:
    """Run the monitor service."""
    settings = Settings()
    serve(create_app(settings), settings)
