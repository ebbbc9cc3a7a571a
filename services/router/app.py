"""Composition root of the router."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from redis.asyncio import Redis

from services.router.adapters import (
    MlflowModelAliases,
    RedisExperimentStore,
    RedisOutcomeTally,
    adopt_single_model_keys,
)
from services.router.handlers import (
    ApprovalHandler,
    ModelLocks,
    OutcomeHandler,
    OverrideHandler,
    Ticker,
    register,
)
from services.router.metrics import RouterMetrics
from services.router.recovery import StateGuard, mlflow_alias_reader
from services.router.routes import experiments_router
from services.router.settings import Settings
from shared.catalog import ModelCatalog
from shared.errors import DependencyUnavailableError
from shared.mlflow_specs import MlflowSpecSource
from shared.runtime import build_runtime, serve, service_app
from shared.spec import load_spec

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, name: str = "router") -> FastAPI:
    """Build the router app: Redis-backed experiments and tallies, MLflow aliases, routes.

    Every model's experiment runs on its own (keys, lock, looks); the router learns
    its models from their approvals, and the registered ones from the catalog when
    it rebuilds routing tables after Redis lost its data. ``name`` names its consumer
    group and idempotency markers (tests use their own).
    """
    settings = settings or Settings()
    runtime = build_runtime(name, settings)
    store = RedisExperimentStore(runtime.redis)
    tally = RedisOutcomeTally(runtime.redis)
    metrics = RouterMetrics.create(runtime.registry)
    locks = ModelLocks()
    catalog = ModelCatalog(
        MlflowSpecSource(settings.mlflow_tracking_uri),
        settings.model_name,
        load_spec(settings.model_spec_path),
    )
    approvals = ApprovalHandler(store, runtime.publisher, metrics, settings.to_config(), catalog)
    outcomes = OutcomeHandler(
        store,
        tally,
        MlflowModelAliases(settings.mlflow_tracking_uri),
        runtime.publisher,
        metrics,
        locks=locks,
        look_wait_s=settings.look_wait_s,
    )
    overrides = OverrideHandler(store, runtime.publisher, metrics, locks)
    register(runtime.consumer, approvals, outcomes, overrides)
    ticker = Ticker(outcomes.tick, settings.look_interval_s)
    guard = StateGuard(
        runtime.redis,
        store,
        mlflow_alias_reader(settings.mlflow_tracking_uri),
        runtime.publisher,
        runtime.registry,
        catalog.names,
    )
    return service_app(
        runtime,
        checks={"state": guard.ready},
        on_startup=[_adopting(runtime.redis, settings.model_name), ticker.start, guard.start],
        on_shutdown=[guard.stop, ticker.stop, outcomes.close],
        routers=[experiments_router(store, tally, settings.model_name)],
        details=guard.details,
        description="Runs champion/challenger experiments per model: ramp, always-valid looks, "
        "verdicts.",
    )


def _adopting(redis: Redis, model_name: str) -> Callable[[], Awaitable[None]]:
    """A start-up hook moving a single-model router's keys to the default model's."""

    async def adopt() -> None:
        try:
            await adopt_single_model_keys(redis, model_name)
        except DependencyUnavailableError as error:  # Redis away: start anyway, readiness says so
            log.warning("single-model keys not adopted", extra={"error": repr(error)})

    return adopt


def main() -> None:
    """Run the router."""
    settings = Settings()
    serve(create_app(settings), settings)
