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
from services.monitor.adapters import RedisRoutingState, RedisStateStore
from services.monitor.core import Reference
from services.monitor.handlers import DriftMonitor
from services.monitor.metrics import MonitorMetrics
from services.monitor.settings import Settings
from shared.events import ExperimentUpdated, PredictionLogged
from shared.messaging import ProcessedEvents
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


async def test_processed_events_mark_and_check_a_batch_in_one_round_trip(redis: Redis) -> None:
    processed = ProcessedEvents(redis, f"test-{uuid.uuid4().hex[:8]}", ttl_s=60)
    await processed.mark_many(["x", "y"])
    assert await processed.seen_many(["x", "y", "z"]) == {"x", "y"}
    assert await processed.seen("x")


async def test_routing_state_names_the_running_experiment_of_the_model(redis: Redis) -> None:
    key = f"test:routing:{uuid.uuid4().hex}"
    routing = RedisRoutingState(redis, key)
    assert await routing.running_experiment("m") is None
    table = ExperimentUpdated(
        producer="router",
        experiment_id="exp-7",
        model_name="m",
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.1,
    )
    await redis.set(key, table.model_dump_json(), ex=60)
    assert await routing.running_experiment("m") == "exp-7"
    assert await routing.running_experiment("other") is None
    promoted = table.model_copy(update={"status": "promoted", "challenger_share": 0.0})
    await redis.set(key, promoted.model_dump_json(), ex=60)
    assert await routing.running_experiment("m") is None


async def test_a_corrupt_saved_window_in_redis_is_discarded_and_counting_goes_on(
    redis: Redis,
) -> None:
    settings = Settings(model_name=f"test-monitor-{uuid.uuid4().hex[:8]}", window_size=100)
    rng = np.random.default_rng(11)
    reference = Reference.from_columns("7", {"a": rng.normal(size=500)}, None, (), 0.9)

    def monitor() -> DriftMonitor:
        return DriftMonitor(
            settings,
            _OneReference(reference),
            RecordingPublisher(),
            MonitorMetrics.create(CollectorRegistry()),
            RedisStateStore(redis),
        )

    def rows(count: int) -> list[PredictionLogged]:
        return [_prediction(settings.model_name, float(x)) for x in rng.normal(size=count)]

    await monitor().on_predictions(rows(40))
    # What the issue found after a promotion race: the state counts rows the list lacks.
    state_key = f"flywheel:monitor:state:{settings.model_name}"
    saved = await redis.get(state_key)
    assert saved is not None
    state = json.loads(saved)
    state["window"]["filled"] = 90
    await redis.set(state_key, json.dumps(state))
    restarted = monitor()
    await restarted.on_predictions(rows(10))
    assert restarted.metrics.state_discarded.labels("inconsistent")._value.get() == 1
    assert restarted.detector is not None
    assert restarted.detector.filled == 10
    again = monitor()
    await again.on_predictions(rows(5))
    assert again.detector is not None
    assert again.detector.filled == 15


class _OneReference:
    def __init__(self, reference: Reference) -> None:
        self._reference = reference

    def reference(self, model_name: str, version: str | None = None) -> Reference | None:
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
