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
)
from services.gateway.deps import GatewayServices
from services.gateway.errors import describe
from services.gateway.feedback import FeedbackService
from services.gateway.fleet import ModelFleet, ModelStatus
from services.gateway.handlers import ServingHandlers, register
from services.gateway.limits import BodyLimit
from services.gateway.metrics import GatewayMetrics
from services.gateway.openapi import install_spec_document
from services.gateway.ports import (
    FeatureStore,
    ModelRegistry,
    PredictionRecords,
    RoutingStateSource,
)
from services.gateway.prediction_log import PredictionEventBuffer
from services.gateway.recovery import GatewayStateGuard
from services.gateway.routes import feedback, models, predict
from services.gateway.service import PredictionService
from services.gateway.settings import Settings
from services.gateway.shadow import ShadowScorer
from shared.catalog import InMemorySpecSource, ModelCatalog, SpecSource
from shared.messaging import BatchEventPublisher
from shared.mlflow_specs import MlflowSpecSource
from shared.routing import RoutingStateReader
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
    specs: SpecSource | None = None
    """Where registered specs are read (MLflow); None: the default model's spec alone."""


def default_ports(runtime: ServiceRuntime, settings: Settings) -> GatewayPorts:
    """MLflow, Redis and Kafka implementations of the ports (nothing connects yet)."""
    return GatewayPorts(
        registry=MlflowModelRegistry(settings.mlflow_tracking_uri),
        routing_state=RoutingStateReader(runtime.redis),
        # A claim outlives the publish it guards, so a slow live publish is never doubled.
        records=RedisPredictionRecords(
            runtime.redis, settings.feedback_ttl_s, claim_hold_s=settings.publish_timeout_s + 5
        ),
        publisher=runtime.publisher,
        features=RedisFeatureStore(runtime.redis),
        specs=MlflowSpecSource(settings.mlflow_tracking_uri),
    )


def create_app(settings: Settings | None = None, *, ports: GatewayPorts | None = None) -> FastAPI:
    """Build the gateway app: models, event buffer, routes and handlers."""
    settings = settings or Settings()
    runtime = build_runtime("gateway", settings)
    ports = ports or default_ports(runtime, settings)
    metrics = GatewayMetrics.create(runtime.registry)
    fleet = _fleet(settings, ports, metrics)
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
        events, metrics, share=settings.shadow_share, max_in_flight=settings.shadow_max_in_flight
    )
    register(runtime.consumer, ServingHandlers(fleet))
    resync = PeriodicTask(fleet.resync, settings.routing_resync_s, "routing-resync")
    # The broadcast groups start at the log's end: re-read once they joined, so an
    # operator's rollback sent during start-up is not left to the periodic resync.
    runtime.consumer.health.when_all_assigned(fleet.resync)
    guard = GatewayStateGuard(
        runtime.redis,
        lambda: any(s.state == "serving" for s in fleet.statuses()),
        runtime.registry,
        settings.model_name,
    )
    app = service_app(
        runtime,
        checks={"model_loaded": _default_model_loaded(fleet)},
        on_startup=[
            events.start,
            _initial_load(fleet, settings.startup_load_timeout_s),
            resync.start,
            guard.start,  # after the initial load: a loaded model tells a loss from a first start
        ],
        on_shutdown=[guard.stop, resync.stop, fleet.stop, shadow.drain, events.stop],
        routers=[predict.router, feedback.router, models.router],
        description="Serves every registered model's champion and challenger, and takes feedback.",
        details=lambda: _model_details(fleet),
        describe_error=describe,
    )
    app.state.gateway = GatewayServices(
        fleet=fleet,
        predictions=PredictionService(
            fleet,
            events,
            metrics,
            max_batch=settings.max_batch,
            feature_store=ports.features,
            log_predictions=settings.log_predictions,
            shadow=shadow,
        ),
        feedback=FeedbackService(
            ports.records,
            ports.publisher,
            fleet,
            metrics,
            ttl_s=settings.feedback_ttl_s,
            publish_timeout_s=settings.publish_timeout_s,
            pending=events.find,
        ),
    )
    app.state.prediction_events = events
    app.state.state_guard = guard
    app.state.shadow = shadow
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    install_spec_document(app, fleet.specs, settings.model_name, settings.max_batch)
    _add_health_alias(app)
    return app


def _fleet(settings: Settings, ports: GatewayPorts, metrics: GatewayMetrics) -> ModelFleet:
    """The models served: registered ones from the spec source, the configured default beside."""
    default_spec = load_spec(settings.model_spec_path)
    catalog = ModelCatalog(ports.specs or InMemorySpecSource(), settings.model_name, default_spec)
    return ModelFleet(
        catalog,
        ports.registry,
        ports.routing_state,
        metrics,
        (settings.model_name, default_spec),
        max_loaded=settings.max_loaded_models,
        load_timeout_s=settings.on_demand_load_timeout_s,
    )


def _default_model_loaded(fleet: ModelFleet) -> ReadinessCheck:
    """Readiness: the default model's champion is loaded, or the registry names none yet.

    Without one every unprefixed predict is a 503: a gateway cold-started while MLflow
    was away reported ready and took traffic it could not answer. Other models never
    decide readiness: one model that does not load must not take every replica out of
    the load balancer, and with more models than GATEWAY_MAX_LOADED_MODELS not all of
    them are in memory. Their states are listed beside (``by_model``).
    """

    async def check() -> bool:
        return fleet.default.champion_ready

    return check


def _add_health_alias(app: FastAPI) -> None:
    """``/health``, where seed-style clients look: the readiness answer, body and status."""
    readyz = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/readyz")
    app.add_api_route(
        "/health", readyz.endpoint, methods=["GET"], tags=["ops"], summary="Alias of /readyz"
    )


def _initial_load(fleet: ModelFleet, timeout_s: float) -> Hook:
    async def load() -> None:
        # Wait (for the default model) a bounded time so a slow MLflow cannot hold the
        # HTTP side hostage; the loads go on in the background and swap models in when done.
        task = asyncio.create_task(fleet.load_initial(), name="initial-model-load")
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


def _model_details(fleet: ModelFleet) -> dict[str, object]:
    """``/readyz``'s listing: the default model's variants (as before), then every model."""
    default = fleet.default_status()
    return {
        "model_loaded": default.state == "serving",
        "models": default.variants,
        "by_model": {s.name: _status_details(s) for s in fleet.statuses()},
    }


def _status_details(status: ModelStatus) -> dict[str, object]:
    return {
        "state": status.state,
        "variants": status.variants,
        "experiment_id": status.experiment_id,
        "challenger_share": status.challenger_share,
        "error": status.error,
    }


def main() -> None:
    """Run the gateway."""
    settings = Settings()
    serve(create_app(settings), settings)
