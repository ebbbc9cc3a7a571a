"""The monitor's Redis state store and the batch idempotency markers against a real Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from flywheel.infra import Endpoints
from services.monitor.adapters import RedisStateStore
from services.monitor.core import Reference
from services.monitor.handlers import MonitorHandlers
from services.monitor.metrics import MonitorMetrics
from services.monitor.service import ModelMonitors, MonitorPorts
from services.monitor.settings import Settings
from shared.catalog import InMemorySpecSource, ModelCatalog
from shared.events import ExperimentUpdated, PredictionLogged, model_key, routing_state_key
from shared.messaging import ProcessedEvents
from shared.routing import RoutingStateReader
from shared.spec import ModelSpec, load_spec
from shared.testing import RecordingPublisher

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(infra: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(infra.redis_url)
    yield client
    await client.aclose()


async def test_state_rows_and_pooled_windows_survive_a_new_client(
    redis: Redis, infra: Endpoints
) -> None:
    model = f"test-monitor-{uuid.uuid4().hex[:8]}"
    store = RedisStateStore(redis)
    assert await store.load(model) is None
    await store.save(model, {"filled": 1}, {"numbers": "AA", "labels": [["a"]]}, False, [], 2)
    pooled = [{"numbers": "P1"}, {"numbers": "P2"}, {"numbers": "P3"}]
    await store.save(model, {"filled": 2}, {"numbers": "BB", "labels": [["b"]]}, False, pooled, 2)
    fresh_client = Redis.from_url(infra.redis_url)
    try:
        state, rows, kept = await RedisStateStore(fresh_client).load(model) or ({}, [], [])
        assert state == {"filled": 2}
        assert [r["numbers"] for r in rows] == ["AA", "BB"]
        assert [c["numbers"] for c in kept] == ["P2", "P3"]  # only the last two are kept
        # A closed window starts the row list over.
        await store.save(model, {"filled": 1}, {"numbers": "CC", "labels": []}, True, [], 2)
        state, rows, kept = await RedisStateStore(fresh_client).load(model) or ({}, [], [])
        assert [r["numbers"] for r in rows] == ["CC"]
    finally:
        await fresh_client.aclose()
    # One model's keys share one hash tag (one Redis Cluster slot), apart from other models'.
    found = await redis.keys(f"flywheel:monitor:{{{model}}}:*")
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in found)
    assert keys == [model_key("monitor", model, k) for k in ("pooled", "rows", "state")]


async def test_processed_events_mark_and_check_a_batch_in_one_round_trip(redis: Redis) -> None:
    processed = ProcessedEvents(redis, f"test-{uuid.uuid4().hex[:8]}", ttl_s=60)
    await processed.mark_many(["x", "y"])
    assert await processed.seen_many(["x", "y", "z"]) == {"x", "y"}
    assert await processed.seen("x")


async def test_routing_state_names_the_running_experiment_of_each_model(redis: Redis) -> None:
    model = f"test-monitor-{uuid.uuid4().hex[:8]}"
    key = routing_state_key(model)
    routing = RoutingStateReader(redis)
    assert await routing.running_experiment(model) is None
    table = ExperimentUpdated(
        producer="router",
        experiment_id="exp-7",
        model_name=model,
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.1,
    )
    await redis.set(key, table.model_dump_json(), ex=60)
    assert await routing.running_experiment(model) == "exp-7"
    assert await routing.running_experiment(f"{model}-other") is None
    promoted = table.model_copy(update={"status": "promoted", "challenger_share": 0.0})
    await redis.set(key, promoted.model_dump_json(), ex=60)
    assert await routing.running_experiment(model) is None


async def test_a_corrupt_saved_window_in_redis_is_discarded_and_counting_goes_on(
    redis: Redis,
) -> None:
    settings = Settings(model_name=f"test-monitor-{uuid.uuid4().hex[:8]}", window_size=100)
    rng = np.random.default_rng(11)
    reference = Reference.from_columns("7", {"a": rng.normal(size=500)}, None, (), 0.9)

    def monitor() -> tuple[MonitorHandlers, CollectorRegistry]:
        registry = CollectorRegistry()
        ports = MonitorPorts(_OneReference(reference), RedisStateStore(redis), RecordingPublisher())
        catalog = ModelCatalog(InMemorySpecSource(), settings.model_name, load_spec())
        metrics = MonitorMetrics.create(registry)
        models = ModelMonitors(ports, catalog, settings.to_config(), metrics)
        return MonitorHandlers(models), registry

    def filled(handlers: MonitorHandlers) -> int | None:
        drift = handlers.models.of(settings.model_name).drift
        return None if drift is None else drift.detector.filled

    def rows(count: int) -> list[PredictionLogged]:
        return [_prediction(settings.model_name, float(x)) for x in rng.normal(size=count)]

    await monitor()[0].on_predictions(rows(40))
    # What the issue found after a promotion race: the state counts rows the list lacks.
    state_key = model_key("monitor", settings.model_name, "state")
    saved = await redis.get(state_key)
    assert saved is not None
    state = json.loads(saved)
    state["window"]["filled"] = 90
    await redis.set(state_key, json.dumps(state))
    restarted, registry = monitor()
    await restarted.on_predictions(rows(10))
    labels = {"model_name": settings.model_name, "reason": "inconsistent"}
    assert registry.get_sample_value("ml_monitor_state_discarded_total", labels) == 1
    assert filled(restarted) == 10
    again, _ = monitor()
    await again.on_predictions(rows(5))
    assert filled(again) == 15


class _OneReference:
    def __init__(self, reference: Reference) -> None:
        self._reference = reference

    def reference(
        self, model_name: str, spec: ModelSpec, version: str | None = None
    ) -> Reference | None:
        return self._reference


def _prediction(model_name: str, a: float) -> PredictionLogged:
    return PredictionLogged(
        producer="gateway",
        request_id="r",
        model_name=model_name,
        version="7",
        variant="champion",
        features={"a": a},
        predicted_class="steady",
        confidence=0.9,
        latency_ms=1.0,
    )
