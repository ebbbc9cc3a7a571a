"""Composition root of the monitor."""

from __future__ import annotations

from fastapi import FastAPI

from services.monitor.adapters import MlflowReferenceStore, RedisStateStore
from services.monitor.handlers import MonitorHandlers, register
from services.monitor.metrics import MonitorMetrics
from services.monitor.service import ModelMonitors, MonitorPorts
from services.monitor.settings import Settings
from shared.catalog import ModelCatalog
from shared.mlflow_specs import MlflowSpecSource
from shared.routing import RoutingStateReader
from shared.runtime import build_runtime, mlflow_check, serve, service_app
from shared.spec import load_spec


def create_app(settings: Settings | None = None, name: str = "monitor") -> FastAPI:
    """Build the monitor: drift windows per model over prediction-logged, drift-detected out.

    ``name`` names its consumer group and idempotency markers (tests use their own).
    """
    settings = settings or Settings()
    runtime = build_runtime(name, settings)
    catalog = ModelCatalog(
        MlflowSpecSource(settings.mlflow_tracking_uri),
        settings.model_name,
        load_spec(settings.model_spec_path),
    )
    ports = MonitorPorts(
        references=MlflowReferenceStore(settings.mlflow_tracking_uri),
        states=RedisStateStore(runtime.redis),
        publisher=runtime.publisher,
        routing=RoutingStateReader(runtime.redis),
    )
    metrics = MonitorMetrics.create(runtime.registry)
    models = ModelMonitors(ports, catalog, settings.to_config(), metrics)
    register(
        runtime.consumer,
        MonitorHandlers(models),
        batch_size=settings.batch_size,
        batch_timeout_ms=settings.batch_timeout_ms,
    )
    return service_app(
        runtime,
        checks={"mlflow": mlflow_check(settings.mlflow_tracking_uri)},
        description="Data drift (KS, χ²; the predictions' distribution too) and concept drift "
        "(a classifier's accuracy, a regressor's loss, CUSUM) of every model against its "
        "champion.",
    )


def main() -> None:
    """Run the monitor service."""
    settings = Settings()
    serve(create_app(settings), settings)
