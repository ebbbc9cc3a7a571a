"""Composition root of the router."""

from __future__ import annotations

from fastapi import FastAPI

from services.router.adapters import MlflowModelAliases, RedisExperimentStore, RedisOutcomeTally
from services.router.handlers import (
    ApprovalHandler,
    OutcomeHandler,
    OverrideHandler,
    Ticker,
    register,
)
from services.router.metrics import RouterMetrics
from services.router.recovery import StateGuard, mlflow_alias_reader
from services.router.routes import experiments_router
from services.router.settings import Settings
from shared.runtime import build_runtime, serve, service_app


def create_app(settings: Settings | None = None, name: str = "router") -> FastAPI:
    """Build the router app: Redis-backed experiments and tallies, MLflow aliases, routes.

    ``name`` names its consumer group and idempotency markers (tests use their own).
    """
    settings = settings or Settings()
    runtime = build_runtime(name, settings)
    store = RedisExperimentStore(runtime.redis)
    tally = RedisOutcomeTally(runtime.redis)
    metrics = RouterMetrics.create(runtime.registry)
    approvals = ApprovalHandler(store, runtime.publisher, metrics, settings.plan())
    outcomes = OutcomeHandler(
        store, tally, MlflowModelAliases(settings.mlflow_tracking_uri), runtime.publisher, metrics
    )
    overrides = OverrideHandler(store, runtime.publisher, metrics, outcomes.lock)
    register(runtime.consumer, approvals, outcomes, overrides)
    ticker = Ticker(outcomes.tick, settings.look_interval_s)
    guard = StateGuard(
        runtime.redis,
        store,
        mlflow_alias_reader(settings.mlflow_tracking_uri),
        runtime.publisher,
        runtime.registry,
        settings.model_name,
    )
    return service_app(
        runtime,
        checks={"state": guard.ready},
        on_startup=[ticker.start, guard.start],
        on_shutdown=[guard.stop, ticker.stop],
        routers=[experiments_router(store, tally)],
        details=guard.details,
        description="Runs champion/challenger experiments: ramp, always-valid looks, verdicts.",
    )


def main() -> None:
    """Run the router."""
    settings = Settings()
    serve(create_app(settings), settings)
