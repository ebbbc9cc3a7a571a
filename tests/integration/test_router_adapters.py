"""The router's Redis experiment store against a real Redis, read back as the gateway does."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from flywheel.infra import Endpoints
from services.gateway.adapters import RedisRoutingState
from services.router.adapters import RedisExperimentStore, RedisOutcomeTally
from services.router.core import Experiment
from shared.events import ExperimentUpdated

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(infra: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(infra.redis_url)
    yield client
    await client.aclose()


async def test_save_writes_the_experiment_and_the_shared_routing_table(redis: Redis) -> None:
    prefix = f"test:router:{uuid.uuid4().hex}:"
    store = RedisExperimentStore(redis, prefix=prefix, routing_key=prefix + "routing")
    model = f"model-{uuid.uuid4().hex[:8]}"
    experiment = Experiment(
        experiment_id="exp-1",
        model_name=model,
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.1,
        opened_at=datetime.now(UTC),
    )
    update = ExperimentUpdated(
        producer="router",
        experiment_id="exp-1",
        model_name=model,
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.1,
    )
    assert await store.current(model) is None
    await store.save(experiment, update)
    assert await store.current(model) == experiment
    assert await store.routing_table() == update
    raw = await redis.get(prefix + "routing")
    assert raw is not None
    assert ExperimentUpdated.model_validate_json(raw) == update
    # What the gateway reads at start-up is what the router wrote.
    assert await RedisRoutingState(redis, key=prefix + "routing").latest() == update


async def test_tally_counts_each_event_once_and_reads_back_as_statistics(redis: Redis) -> None:
    prefix = f"test:router:{uuid.uuid4().hex}:"
    tally = RedisOutcomeTally(redis, prefix=prefix)
    increments = {"challenger:labelled": 1.0, "challenger:correct": 1.0, "split:labelled:0.1": 1.0}
    assert await tally.add("event-1", "exp-1", increments)
    assert not await tally.add("event-1", "exp-1", increments)  # a redelivery
    assert await tally.add("event-2", "exp-1", {"challenger:labelled": 1.0})
    stats = await tally.stats("exp-1")
    assert (stats.challenger.labelled, stats.challenger.correct) == (2, 1)
    assert stats.split.labelled == {"0.1": 1}
    assert (await tally.stats("exp-other")).challenger.labelled == 0
