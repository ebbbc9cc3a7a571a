"""Prediction records on a real Redis: kept as long as the outcome window asks, under the
documented size, and refused rather than evicted when Redis is full.

The first test writes production keys (fresh request ids) on the session's Redis; the
second fills a Redis of its own, started as ``flywheel up`` starts it, so lowering its
ceiling touches nobody else's keys.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from _support import free_port
from redis.exceptions import OutOfMemoryError

from flywheel.infra import Endpoints, InfraConfig
from flywheel.infra.processes import stop
from flywheel.infra.redis import start_redis
from services.gateway.adapters import RedisPredictionRecords
from services.gateway.settings import Settings
from shared.events import PredictionLogged
from shared.messaging import OUTAGE_ERRORS
from shared.redis_client import RedisClient, redis_client

pytestmark = pytest.mark.integration

#: The documented bounds (docs/architecture.md), in MEMORY USAGE bytes per key.
RECORD_BYTES, MARKER_BYTES = 250, 150
#: What feedback takes from a recalled record (services.gateway.feedback).
JOINED = ("event_id", "correlation_id", "model_name", "version", "variant")
ANSWERS = ("predicted_class", "predicted_value", "experiment_id", "challenger_share")


def _logged(regression: bool = False, batch_row: int | None = None) -> PredictionLogged:
    correlation = str(uuid.uuid4())
    request_id = correlation if batch_row is None else f"{correlation}-{batch_row}"
    answer: dict[str, object] = (
        {"predicted_value": 57.25} if regression else {"predicted_class": "steady"}
    )
    return PredictionLogged(
        producer="gateway",
        correlation_id=correlation,
        request_id=request_id,
        model_name="monthly-spend" if regression else "customer-segment",
        version="12",
        variant="challenger",
        entity_id="cust-000123",
        features={"age": 41.0, "plan": "premium"},
        confidence=None if regression else 0.87,
        latency_ms=0.8,
        experiment_id=str(uuid.uuid4()),
        challenger_share=0.05,
        **answer,
    )


@pytest.fixture
async def redis(infra: Endpoints) -> AsyncIterator[RedisClient]:
    client = redis_client(infra.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_record_lives_twice_the_outcome_window_and_stays_small(
    redis: RedisClient,
) -> None:
    settings = Settings(outcome_window_s=45_000)
    records = RedisPredictionRecords(redis, settings.record_ttl_s)
    events = [_logged(), _logged(regression=True), _logged(batch_row=3)]
    await records.remember(events)
    for event in events:
        key = f"flywheel:gateway:prediction:{event.request_id}"
        assert 89_990_000 < await redis.pttl(key) <= 90_000_000  # 2 × 45,000 s, just written
        assert 0 < _bytes(await redis.memory_usage(key)) <= RECORD_BYTES
        recalled = await records.recall(event.request_id)
        assert recalled is not None
        fields = JOINED + ANSWERS
        assert [getattr(recalled, f) for f in fields] == [getattr(event, f) for f in fields]
    labelled = events[0].request_id
    assert await records.claim_feedback(labelled)
    await records.confirm_feedback(labelled)
    marker = f"flywheel:gateway:feedback:{labelled}"
    assert 89_990_000 < await redis.pttl(marker) <= 90_000_000
    assert 0 < _bytes(await redis.memory_usage(marker)) <= MARKER_BYTES


def _bytes(usage: int | None) -> int:
    return usage or 0


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfraConfig]:
    config = InfraConfig(run_dir=tmp_path_factory.mktemp("records"), redis_port=free_port())
    start_redis(config)
    try:
        yield config
    finally:
        stop(config.run_dir, "redis")


async def test_a_full_redis_refuses_new_records_and_evicts_none(own_redis: InfraConfig) -> None:
    client = redis_client(own_redis.redis_url)
    try:
        # The local stack's policy: a ceiling, and no eviction at it.
        assert await client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert await client.config_get("maxmemory") == {"maxmemory": str(2 * 2**30)}
        records = RedisPredictionRecords(client, ttl_s=60)
        kept = [_logged() for _ in range(500)]
        await records.remember(kept)
        # Full: a ceiling below what it holds. An evicting policy would now drop records
        # (they all expire) to make room; this one refuses the write instead.
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory", used - 64 * 1024)
        with pytest.raises(OutOfMemoryError) as refused:
            await records.remember([_logged() for _ in range(500)])
        # An outage to every consumer: retried without committing, never dead-lettered.
        assert isinstance(refused.value, OUTAGE_ERRORS)
        # A feedback claim is a write: refused too (the gateway answers 503, retry later).
        with pytest.raises(OutOfMemoryError):
            await records.claim_feedback(kept[0].request_id)
        # Nothing was evicted to make room: every earlier record still answers feedback.
        assert all([await records.recall(e.request_id) is not None for e in kept])
    finally:
        await client.aclose()
