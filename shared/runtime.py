"""What every service is built from: broker, Redis, metrics registry, publisher, consumer context.

``build_runtime`` creates clients but connects nothing; ``service_app`` turns a
runtime into a FastAPI app whose lifespan connects, serves ``/healthz``,
``/readyz`` and ``/metrics``, and shuts down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import PlainTextResponse
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis

from shared.http_errors import Describe, install_error_handlers
from shared.kafka_security import faststream_security
from shared.logging import configure_logging
from shared.messaging import (
    PRODUCER_MAX_BATCH_BYTES,
    ConsumerContext,
    KafkaEventPublisher,
    ProcessedEvents,
)
from shared.metrics import MessagingMetrics
from shared.settings import BaseServiceSettings

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]
Hook = Callable[[], Awaitable[None]]
#: Extra fields for ``/readyz`` that inform without deciding readiness (e.g. loaded models).
ReadinessDetails = Callable[[], dict[str, object]]


@dataclass
class ServiceRuntime:
    """The shared plumbing of one service process."""

    name: str
    settings: BaseServiceSettings
    broker: KafkaBroker
    redis: Redis
    registry: CollectorRegistry
    messaging: MessagingMetrics
    publisher: KafkaEventPublisher
    consumer: ConsumerContext
    broker_started: asyncio.Event = field(default_factory=asyncio.Event)


def build_runtime(name: str, settings: BaseServiceSettings) -> ServiceRuntime:
    """Create (not connect) the broker, Redis client, metrics and messaging helpers."""
    kafka = settings.kafka_connection()
    broker = KafkaBroker(
        kafka.bootstrap,
        security=faststream_security(kafka.security),
        client_id=f"flywheel-{name}",
        max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        # Through the root handler, so FastStream's own lines are JSON like ours.
        logger=logging.getLogger("faststream"),
    )
    redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    registry = CollectorRegistry()
    messaging = MessagingMetrics.create(registry)
    processed = ProcessedEvents(redis, name, settings.idempotency_ttl_s)
    return ServiceRuntime(
        name=name,
        settings=settings,
        broker=broker,
        redis=redis,
        registry=registry,
        messaging=messaging,
        publisher=KafkaEventPublisher(broker, name, messaging),
        consumer=ConsumerContext(name, broker, processed, messaging, settings.max_attempts),
    )


def redis_check(redis: Redis) -> ReadinessCheck:
    """Readiness: Redis answers PING."""

    async def check() -> bool:
        try:
            return bool(await redis.ping())
        except Exception:
            return False

    return check


def mlflow_check(tracking_uri: str) -> ReadinessCheck:
    """Readiness: the MLflow tracking server answers /health (local file stores always do)."""

    async def check() -> bool:
        if not tracking_uri.startswith("http"):
            return True
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{tracking_uri.rstrip('/')}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def broker_check(runtime: ServiceRuntime) -> ReadinessCheck:
    """Readiness: the broker connected and answers a metadata request."""

    async def check() -> bool:
        if not runtime.broker_started.is_set():
            return False
        try:
            return await runtime.broker.ping(timeout=2)
        except Exception:
            return False

    return check


def consuming_check(runtime: ServiceRuntime) -> ReadinessCheck:
    """Readiness: no subscription dead-letters every event it reads (reasons in ``/readyz``)."""

    async def check() -> bool:
        return not runtime.consumer.health.problems()

    return check


async def _start_broker(runtime: ServiceRuntime, retry_s: float = 2.0) -> None:
    """Connect to Kafka, retrying until it answers: the HTTP side serves meanwhile."""
    while True:
        try:
            await runtime.broker.start()
            runtime.broker_started.set()
            log.info("broker connected")
            return
        except Exception as error:
            log.warning("broker unavailable, retrying", extra={"error": repr(error)})
            with contextlib.suppress(Exception):
                await runtime.broker.stop()
            await asyncio.sleep(retry_s)


def service_app(
    runtime: ServiceRuntime,
    *,
    checks: dict[str, ReadinessCheck] | None = None,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
    routers: Sequence[APIRouter] = (),
    title: str | None = None,
    description: str = "",
    details: ReadinessDetails | None = None,
    describe_error: Describe = str,
) -> FastAPI:
    """A FastAPI app with health, readiness and metrics whose lifespan runs the broker.

    Errors are answered by ``shared.http_errors``; ``describe_error`` says what their
    ``detail`` holds (the message by default).
    """
    all_checks = {"broker": broker_check(runtime), "redis": redis_check(runtime.redis)}
    all_checks.update(checks or {})
    all_checks["consuming"] = consuming_check(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        configure_logging(runtime.name, runtime.settings.log_level)
        for hook in on_startup:
            await hook()
        connecting = asyncio.create_task(_start_broker(runtime))
        try:
            yield
        finally:
            connecting.cancel()
            for hook in on_shutdown:
                await hook()
            await runtime.broker.stop()  # stops consumers after in-flight handlers, commits
            await runtime.redis.aclose()

    app = FastAPI(
        title=title or f"flywheel-{runtime.name}", description=description, lifespan=lifespan
    )
    app.state.runtime = runtime
    install_error_handlers(app, describe_error)
    _add_probe_routes(app, runtime, all_checks, details)
    for router in routers:
        app.include_router(router)
    return app


def _add_probe_routes(
    app: FastAPI,
    runtime: ServiceRuntime,
    checks: dict[str, ReadinessCheck],
    details: ReadinessDetails | None = None,
) -> None:
    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": runtime.name}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: broker and dependencies reachable",
        responses={503: {"description": "Not ready: the failing checks are false"}},
    )
    async def readyz(response: Response) -> dict[str, object]:
        results = dict(
            zip(checks, await asyncio.gather(*(c() for c in checks.values())), strict=True)
        )
        ready = all(results.values())
        response.status_code = 200 if ready else 503
        extra = details() if details is not None else {}
        reasons = runtime.consumer.health.problems()
        return {
            **extra,
            "ready": ready,
            "service": runtime.name,
            "checks": results,
            "reasons": reasons,
        }

    # Documented as text, as Prometheus serves it (clients and schemathesis check the type).
    @app.get(
        "/metrics", tags=["ops"], summary="Prometheus metrics", response_class=PlainTextResponse
    )
    async def metrics() -> Response:
        return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)


def serve(app: FastAPI, settings: BaseServiceSettings) -> None:
    """Run ``app`` with uvicorn; SIGTERM finishes in-flight work before exiting."""
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
    )
