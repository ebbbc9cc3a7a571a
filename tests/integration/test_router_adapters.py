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
from services.router.core.outcomes import Label, OutcomeWindow, PendingOutcome, close_increments
from shared.events import ExperimentUpdated, Variant

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
    increments = {"0.1|challenger:assigned": 1.0, "0.1|challenger:requests": 1.0}
    assert await tally.add("event-1", "exp-1", increments)
    assert not await tally.add("event-1", "exp-1", increments)  # a redelivery
    assert await tally.add("event-2", "exp-1", {"0.5|challenger:assigned": 1.0})
    stats = await tally.stats("exp-1")
    assert (stats.challenger.assigned, stats.challenger.requests) == (2, 1)
    assert stats.strata["0.1"].challenger.assigned == 1
    assert (await tally.stats("exp-other")).challenger.assigned == 0


def _pending(request_id: str, arm: Variant, at: float) -> PendingOutcome:
    return PendingOutcome(request_id=request_id, arm=arm, stratum="0.5", predicted_at=at)


async def test_outcome_windows_close_once_with_labels_in_time_and_late_ones_refused(
    redis: Redis,
) -> None:
    prefix = f"test:router:{uuid.uuid4().hex}:"
    tally = RedisOutcomeTally(redis, prefix=prefix)
    window = OutcomeWindow(seconds=60)
    assert await tally.open_outcome("exp-1", _pending("a", "champion", 1000.0))
    assert not await tally.open_outcome("exp-1", _pending("a", "champion", 1000.0))
    assert await tally.open_outcome("exp-1", _pending("b", "challenger", 1030.0))
    # A label may come before its prediction is seen: it waits for it.
    assert await tally.label("exp-1", "c", Label(correct=True, at=1001.0)) == "open"
    assert await tally.open_outcome("exp-1", _pending("c", "challenger", 1000.0))
    assert await tally.label("exp-1", "a", Label(correct=False, at=1010.0)) == "open"
    assert await tally.label("exp-1", "a", Label(correct=True, at=1011.0)) == "duplicate"
    assert (await tally.stats("exp-1")).open_outcomes == 3
    closing = await tally.due("exp-1", window, now=1070.0)
    assert sorted(p.request_id for p, _ in closing.outcomes) == ["a", "c"]
    increments, shift = close_increments(closing, window)
    assert await tally.close("exp-1", increments, shift) == 2
    assert await tally.close("exp-1", increments, shift) == 0  # already closed: counted once
    assert await tally.label("exp-1", "a", Label(correct=True, at=1080.0)) == "late"
    stats = await tally.stats("exp-1")
    assert (stats.champion.closed, stats.champion.labelled, stats.champion.correct) == (1, 1, 0)
    assert (stats.challenger.closed, stats.challenger.labelled) == (1, 1)
    assert stats.open_outcomes == 1


async def test_windows_of_a_count_of_predictions_and_rewards_around_a_shift(redis: Redis) -> None:
    prefix = f"test:router:{uuid.uuid4().hex}:"
    tally = RedisOutcomeTally(redis, prefix=prefix)
    window = OutcomeWindow(seconds=3600, predictions=2)
    for i, reward in enumerate((1e8 + 1, 1e8 + 2, 1e8 + 3)):
        assert await tally.open_outcome("exp-r", _pending(f"r{i}", "champion", 0.0))
        assert await tally.label("exp-r", f"r{i}", Label(reward=reward, at=0.0)) == "open"
    for i in range(3, 5):
        assert await tally.open_outcome("exp-r", _pending(f"r{i}", "challenger", 0.0))
    closing = await tally.due("exp-r", window, now=1.0)
    assert sorted(p.request_id for p, _ in closing.outcomes) == ["r0", "r1", "r2"]
    increments, shift = close_increments(closing, window)
    assert shift == 1e8 + 1
    assert await tally.close("exp-r", increments, shift) == 3
    assert await tally.close("exp-r", {}, shift + 1) == -1  # another shift: refused
    stats = await tally.stats("exp-r")
    assert stats.reward_shift == 1e8 + 1
    assert stats.champion.reward_n == 3
    assert stats.champion.reward_sumsq == 5.0  # 0² + 1² + 2² around the first reward
