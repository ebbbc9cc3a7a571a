"""Composition root of the router."""

from __future__ import annotations

from fastapi import FastAPI

from services.router.adapters import RedisExperimentStore
from services.router.handlers import ApprovalHandler, register
from services.router.metrics import RouterMetrics
from services.router.routes import experiments_router
from services.router.settings import Settings
from shared.runtime import build_runtime, serve, service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the router app: Redis-backed experiment store, approval handler, routes."""
    settings = settings or Settings()
    runtime = build_runtime("router", settings)
    store = RedisExperimentStore(runtime.redis)
    metrics = RouterMetrics.create(runtime.registry)
    approvals = ApprovalHandler(store, runtime.publisher, metrics, settings.initial_share)
    register(runtime.consumer, approvals)
    return service_app(
        runtime,
        routers=[experiments_router(store)],
        description="Opens experiments from approvals and publishes the routing table.",
    )


def main() -> None:
    """Run the router."""
    settings = Settings()
    serve(create_app(settings), settings)
