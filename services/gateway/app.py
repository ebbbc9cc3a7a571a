"""Composition root of the gateway."""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import APIRoute

from services.gateway.adapters import (
    MlflowModelRegistry,
    RedisFeatureStore,
    RedisPredictionRecords,
    RedisRoutingState,
)
from services.gateway.deps import GatewayServices
from services.gateway.errors import install_error_handlers
from services.gateway.handlers import register
from services.gateway.limits import BodyLimit
from services.gateway.metrics import GatewayMetrics
from services.gateway.openapi import install_spec_document
from services.gateway.pool import ModelPool
from services.gateway.ports import (
    FeatureStore,
    ModelRegistry,
    PredictionRecords,
    RoutingStateSource,
)
from services.gateway.prediction_log import PredictionEventBuffer
from services.gateway.recovery import GatewayStateGuard
from services.gateway.routes import feedback, predict
from services.gateway.service import FeedbackService, PredictionService
from services.gateway.serving import ServingRefresher
from services.gateway.settings import Settings
from services.gateway.shadow import ShadowScorer
from shared.messaging import BatchEventPublisher
from shared.runtime import (
    Hook,
    ReadinessCheck,
    ServiceRuntime,
    build_runtime,
    serve,
    service_app,
)
from shared.spec import load_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayPorts:
    """The gateway's I/O; tests pass fakes, production builds them from the runtime."""

    registry: ModelRegistry
    routing_state: RoutingStateSource
    records: PredictionRecords
    publisher: BatchEventPublisher
    features: FeatureStore | None = None


def default_ports(runtime: ServiceRuntime, settings: Settings) -> GatewayPorts:
    """MLflow, Redis and Kafka implementations of the ports (nothing connects yet)."""
    return GatewayPorts(
        registry=MlflowModelRegistry(settings.mlflow_tracking_uri),
        routing_state=RedisRoutingState(runtime.redis),
        # A claim outlives the publish it guards, so a slow live publish is never doubled.
        records=RedisPredictionRecords(
            runtime.redis, settings.feedback_ttl_s, claim_hold_s=settings.publish_timeout_s + 5
        ),
        publisher=runtime.publisher,
        features=RedisFeatureStore(runtime.redis),
    )


def create_app(settings: Settings | None = None, *, ports: GatewayPorts | None = None) -> FastAPI:
    """Build the gateway app: model pool, refresher, event buffer, routes and handlers."""
    settings = settings or Settings()
    runtime = build_runtime("gateway", settings)
    ports = ports or default_ports(runtime, settings)
    metrics = GatewayMetrics.create(runtime.registry)
    spec = load_spec(settings.model_spec_path)
    pool = ModelPool()
    refresher = ServingRefresher(
        pool, ports.registry, ports.routing_state, settings.model_name, metrics, spec
    )
    events = PredictionEventBuffer(
        ports.publisher,
        ports.records,
        metrics,
        capacity=settings.event_buffer,
        batch_size=settings.publish_batch,
        timeout_s=settings.publish_timeout_s,
        linger_s=settings.publish_linger_ms / 1000,
    )
    shadow = ShadowScorer(
        events,
        metrics,
        spec,
        share=settings.shadow_share,
        max_in_flight=settings.shadow_max_in_flight,
    )
    register(runtime.consumer, refresher)
    resync = PeriodicTask(refresher.load_initial, settings.routing_resync_s, "routing-resync")
    guard = GatewayStateGuard(
        runtime.redis,
        lambda: pool.snapshot.champion is not None,
        runtime.registry,
        settings.model_name,
    )
    app = service_app(
        runtime,
        checks={"model_loaded": _models_loaded(pool, refresher)},
        on_startup=[
            events.start,
            _initial_load(refresher, settings.startup_load_timeout_s),
            resync.start,
            guard.start,  # after the initial load: a loaded model tells a loss from a first start
        ],
        on_shutdown=[guard.stop, resync.stop, shadow.drain, events.stop],
        routers=[predict.router, feedback.router],
        description="Serves champion and challenger predictions and takes feedback.",
        details=lambda: _model_details(pool),
    )
    app.state.gateway = GatewayServices(
        pool=pool,
        predictions=PredictionService(
            pool,
            spec,
            events,
            metrics,
            model_name=settings.model_name,
            max_batch=settings.max_batch,
            feature_store=ports.features,
            log_predictions=settings.log_predictions,
            shadow=shadow,
        ),
        feedback=FeedbackService(
            ports.records,
            ports.publisher,
            spec,
            metrics,
            ttl_s=settings.feedback_ttl_s,
            publish_timeout_s=settings.publish_timeout_s,
            pending=events.find,
        ),
    )
    app.state.prediction_events = events
    app.state.refresher = refresher
    app.state.state_guard = guard
    app.state.shadow = shadow
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    install_spec_document(app, spec, settings.max_batch)
    _add_health_alias(app)
    return app


def _models_loaded(pool: ModelPool, refresher: ServingRefresher) -> ReadinessCheck:
    """Readiness: a champion is loaded, or the registry names none yet (a fresh system).

    Without one every predict is a 503: a gateway cold-started while MLflow was away
    reported ready and took traffic it could not answer.
    """

    async def check() -> bool:
        return pool.snapshot.champion is not None or refresher.nothing_to_serve

    return check


def _add_health_alias(app: FastAPI) -> None:
    """``/health``, where seed-style clients look: the readiness answer, body and status."""
    readyz = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/readyz")
    app.add_api_route(
        "/health", readyz.endpoint, methods=["GET"], tags=["ops"], summary="Alias of /readyz"
    )


def _initial_load(refresher: ServingRefresher, timeout_s: float) -> Hook:
    async def load() -> None:
        # Wait a bounded time so a slow MLflow cannot hold the HTTP side hostage;
        # the load goes on in the background and swaps models in when done.
        task = asyncio.create_task(refresher.load_initial(), name="initial-model-load")
        _, pending = await asyncio.wait({task}, timeout=timeout_s)
        if pending:
            log.warning("models still loading after start-up", extra={"timeout_s": timeout_s})
        # What start-up loaded (libraries, the first models) lives as long as the process.
        # Frozen, it is left out of full garbage collections, each of which would otherwise
        # stall every request in flight for ~0.2 s (400k objects; see docs/benchmarks.md).
        gc.collect()
        gc.freeze()

    return load


class PeriodicTask:
    """Runs a coroutine every ``period_s`` in the background; failures are logged, not fatal."""

    def __init__(self, work: Hook, period_s: float, name: str) -> None:
        self._work, self._period_s, self._name = work, period_s, name
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the loop."""
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        """Cancel the loop."""
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._period_s)
            try:
                await self._work()
            except Exception as error:
                log.warning(
                    "periodic task failed", extra={"task": self._name, "error": repr(error)}
                )


def _model_details(pool: ModelPool) -> dict[str, object]:
    snapshot = pool.snapshot
    return {"model_loaded": snapshot.champion is not None, "models": snapshot.describe()}


def main() -> None:
    """Run the gateway."""
    settings = Settings()
    serve(create_app(settings), settings)
