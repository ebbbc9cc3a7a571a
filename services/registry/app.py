"""Composition root of the registry: settings, adapter, handler, routes, the app."""

from __future__ import annotations

from fastapi import FastAPI

from services.registry.adapters import MlflowModelRegistry
from services.registry.handlers import RegistryHandlers, register
from services.registry.metrics import RegistryMetrics
from services.registry.routes import versions_router
from services.registry.settings import Settings
from shared.runtime import build_runtime, mlflow_check, serve, service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the registry (connects nothing until the app starts)."""
    settings = settings or Settings()
    runtime = build_runtime("registry", settings)
    models = MlflowModelRegistry(settings.mlflow_tracking_uri)
    handlers = RegistryHandlers(
        models=models,
        publisher=runtime.publisher,
        metrics=RegistryMetrics.create(runtime.registry),
        min_accuracy=settings.min_accuracy,
    )
    register(runtime.consumer, handlers)
    return service_app(
        runtime,
        checks={"mlflow": mlflow_check(settings.mlflow_tracking_uri)},
        routers=[versions_router(models)],
        description="Registers trained models, gates them and assigns champion/challenger.",
    )


def main() -> None:
    """Run the registry's HTTP server and consumer."""
    settings = Settings()
    serve(create_app(settings), settings)
