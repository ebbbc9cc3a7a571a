"""The monitor's Redis state store and the batch idempotency markers against a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from flywheel.infra import Endpoints
from services.monitor.adapters import RedisRoutingState, RedisStateStore
from shared.events import ExperimentUpdated
from shared.messaging import ProcessedEvents

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
