"""The monitor's Redis state store and the batch idempotency markers against a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from flywheel.infra import Endpoints
from services.monitor.adapters import RedisStateStore
from shared.messaging import ProcessedEvents

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(infra: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(infra.redis_url)
    yield client
    await client.aclose()


async def test_state_and_row_chunks_survive_a_new_client(redis: Redis, infra: Endpoints) -> None:
    model = f"test-monitor-{uuid.uuid4().hex[:8]}"
    store = RedisStateStore(redis)
    assert await store.load(model) is None
    await store.save(model, {"filled": 1}, {"numbers": "AA", "labels": [["a"]]}, restart_rows=False)
    await store.save(model, {"filled": 2}, {"numbers": "BB", "labels": [["b"]]}, restart_rows=False)
    fresh_client = Redis.from_url(infra.redis_url)
    try:
        state, rows = await RedisStateStore(fresh_client).load(model) or ({}, [])
        assert state == {"filled": 2}
        assert [r["numbers"] for r in rows] == ["AA", "BB"]
        # A closed window starts the row list over.
        await store.save(model, {"filled": 1}, {"numbers": "CC", "labels": []}, restart_rows=True)
        state, rows = await RedisStateStore(fresh_client).load(model) or ({}, [])
        assert [r["numbers"] for r in rows] == ["CC"]
    finally:
        await fresh_client.aclose()


async def test_processed_events_mark_and_check_a_batch_in_one_round_trip(redis: Redis) -> None:
    processed = ProcessedEvents(redis, f"test-{uuid.uuid4().hex[:8]}", ttl_s=60)
    await processed.mark_many(["x", "y"])
    assert await processed.seen_many(["x", "y", "z"]) == {"x", "y"}
    assert await processed.seen("x")
