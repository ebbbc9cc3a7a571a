"""The router's Redis store and tally against a real Redis, read back as the gateway does.

Every model's keys carry its hash tag; two models' experiments live side by side."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from _support import free_port
from redis.asyncio import Redis
from redis.crc import key_slot

from flywheel.infra import Endpoints, InfraConfig
from flywheel.infra.processes import stop
from flywheel.infra.redis import start_redis
from services.router.adapters import (
    EXPERIMENT_INDEX_KEY,
    RedisExperimentStore,
    RedisOutcomeTally,
    adopt_single_model_keys,
)
from services.router.core import Experiment
from services.router.core.outcomes import Label, OutcomeWindow, PendingOutcome, close_increments
from shared.events import ExperimentUpdated, Variant, routing_state_key
from shared.routing import RoutingStateReader

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(infra: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(infra.redis_url)
    yield client
    await client.aclose()


def _running(model: str, experiment_id: str, challenger: str = "2") -> Experiment:
    return Experiment(
        experiment_id=experiment_id,
        model_name=model,
        status="running",
        champion_version="1",
        challenger_version=challenger,
        challenger_share=0.1,
        opened_at=datetime.now(UTC),
    )


def _update(experiment: Experiment) -> ExperimentUpdated:
    return ExperimentUpdated(
        producer="router",
        experiment_id=experiment.experiment_id,
        model_name=experiment.model_name,
        status=experiment.status,
        champion_version=experiment.champion_version,
        challenger_version=experiment.challenger_version,
        challenger_share=experiment.challenger_share,
    )


def _model() -> str:
    return f"model-{uuid.uuid4().hex[:8]}"


async def test_save_writes_the_experiment_and_the_models_routing_table(redis: Redis) -> None:
    store = RedisExperimentStore(redis, index_key=f"test:router:{uuid.uuid4().hex}")
    model = _model()
    experiment = _running(model, "exp-1")
    update = _update(experiment)
    assert await store.current(model) is None
    await store.save(experiment, update)
    assert await store.current(model) == experiment
    assert await store.get(model, "exp-1") == experiment
    assert await store.find("exp-1") == experiment
    assert await store.routing_table(model) == update
    raw = await redis.get(routing_state_key(model))
    assert raw is not None
    assert ExperimentUpdated.model_validate_json(raw) == update
    # What the gateway and the monitor read is what the router wrote.
    assert await RoutingStateReader(redis).latest(model) == update


async def test_two_models_experiments_coexist_each_with_its_own_routing_key(
    redis: Redis,
) -> None:
    store = RedisExperimentStore(redis, index_key=f"test:router:{uuid.uuid4().hex}")
    churn, fraud = _model(), _model()
    first, second = _running(churn, f"exp-{churn}"), _running(fraud, f"exp-{fraud}", "7")
    await store.save(first, _update(first))
    await store.save(second, _update(second))
    # The second model's experiment hides nothing of the first's.
    reader = RoutingStateReader(redis)
    assert await reader.running_experiment(churn) == first.experiment_id
    assert await reader.running_experiment(fraud) == second.experiment_id
    assert await store.current(churn) == first
    assert await store.current(fraud) == second
    assert {e.experiment_id for e in await store.all()} == {
        first.experiment_id,
        second.experiment_id,
    }
    assert await store.all(fraud) == [second]
    # Each routing table is a key of its own, hash-tagged by its model (one Cluster slot
    # with the model's experiment keys), and every router key of a model carries the tag.
    assert routing_state_key(churn) != routing_state_key(fraud)
    churn_keys = {_text(k) for k in await redis.keys(f"*{{{churn}}}*")}
    assert routing_state_key(churn) in churn_keys
    assert {k for k in churn_keys if k.startswith("flywheel:router:")} == {
        f"flywheel:router:{{{churn}}}:experiment",
        f"flywheel:router:{{{churn}}}:experiment:{first.experiment_id}",
    }
    assert len({key_slot(k.encode()) for k in churn_keys}) == 1
    # A verdict on one model leaves the other's experiment running.
    ended = first.model_copy(update={"status": "rolled_back", "challenger_share": 0.0})
    await store.save(ended, _update(ended))
    assert await reader.running_experiment(churn) is None
    assert await reader.running_experiment(fraud) == second.experiment_id


async def test_tally_counts_each_event_once_and_reads_back_as_statistics(redis: Redis) -> None:
    tally, model = RedisOutcomeTally(redis), _model()
    increments = {"0.1|challenger:assigned": 1.0, "0.1|challenger:requests": 1.0}
    assert await tally.add(model, "exp-1", "event-1", increments)
    assert not await tally.add(model, "exp-1", "event-1", increments)  # a redelivery
    assert await tally.add(model, "exp-1", "event-2", {"0.5|challenger:assigned": 1.0})
    stats = await tally.stats(model, "exp-1")
    assert (stats.challenger.assigned, stats.challenger.requests) == (2, 1)
    assert stats.strata["0.1"].challenger.assigned == 1
    assert (await tally.stats(model, "exp-other")).challenger.assigned == 0
    # Another model's experiment of the same id counts apart.
    assert (await tally.stats(_model(), "exp-1")).challenger.assigned == 0
    keys = {_text(k) for k in await redis.keys(f"flywheel:router:{{{model}}}:*")}
    assert f"flywheel:router:{{{model}}}:stats:exp-1" in keys
    assert f"flywheel:router:{{{model}}}:counted:event-1" in keys


def _pending(request_id: str, arm: Variant, at: float) -> PendingOutcome:
    return PendingOutcome(request_id=request_id, arm=arm, stratum="0.5", predicted_at=at)


async def test_outcome_windows_close_once_with_labels_in_time_and_late_ones_refused(
    redis: Redis,
) -> None:
    tally, model = RedisOutcomeTally(redis), _model()
    window = OutcomeWindow(seconds=60)
    assert await tally.open_outcome(model, "exp-1", _pending("a", "champion", 1000.0))
    assert not await tally.open_outcome(model, "exp-1", _pending("a", "champion", 1000.0))
    assert await tally.open_outcome(model, "exp-1", _pending("b", "challenger", 1030.0))
    # A label may come before its prediction is seen: it waits for it.
    assert await tally.label(model, "exp-1", "c", Label(correct=True, at=1001.0)) == "open"
    assert await tally.open_outcome(model, "exp-1", _pending("c", "challenger", 1000.0))
    assert await tally.label(model, "exp-1", "a", Label(correct=False, at=1010.0)) == "open"
    assert await tally.label(model, "exp-1", "a", Label(correct=True, at=1011.0)) == "duplicate"
    assert (await tally.stats(model, "exp-1")).open_outcomes == 3
    closing = await tally.due(model, "exp-1", window, now=1070.0)
    assert sorted(p.request_id for p, _ in closing.outcomes) == ["a", "c"]
    closed = close_increments(closing, window)
    increments, shift = closed.increments, closed.reward_shift
    assert await tally.close(model, "exp-1", increments, shift) == 2
    assert await tally.close(model, "exp-1", increments, shift) == 0  # already closed: counted once
    assert await tally.label(model, "exp-1", "a", Label(correct=True, at=1080.0)) == "late"
    stats = await tally.stats(model, "exp-1")
    assert (stats.champion.closed, stats.champion.labelled, stats.champion.correct) == (1, 1, 0)
    assert (stats.challenger.closed, stats.challenger.labelled) == (1, 1)
    assert stats.open_outcomes == 1
    # The markers the close script builds carry the model's tag: one slot for all its keys.
    keys = {_text(k) for k in await redis.keys(f"*{{{model}}}*")}
    assert f"flywheel:router:{{{model}}}:closed:exp-1:a" in keys
    assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_windows_of_a_count_of_predictions_and_rewards_around_a_shift(redis: Redis) -> None:
    tally, model = RedisOutcomeTally(redis), _model()
    window = OutcomeWindow(seconds=3600, predictions=2)
    for i, reward in enumerate((1e8 + 1, 1e8 + 2, 1e8 + 3)):
        assert await tally.open_outcome(model, "exp-r", _pending(f"r{i}", "champion", 0.0))
        assert await tally.label(model, "exp-r", f"r{i}", Label(reward=reward, at=0.0)) == "open"
    for i in range(3, 5):
        assert await tally.open_outcome(model, "exp-r", _pending(f"r{i}", "challenger", 0.0))
    closing = await tally.due(model, "exp-r", window, now=1.0)
    assert sorted(p.request_id for p, _ in closing.outcomes) == ["r0", "r1", "r2"]
    closed = close_increments(closing, window)
    increments, shift = closed.increments, closed.reward_shift
    assert shift is not None
    assert shift == 1e8 + 1
    assert await tally.close(model, "exp-r", increments, shift) == 3
    assert await tally.close(model, "exp-r", {}, shift + 1) == -1  # another shift: refused
    stats = await tally.stats(model, "exp-r")
    assert stats.reward_shift == 1e8 + 1
    assert stats.champion.reward_n == 3
    assert stats.champion.reward_sumsq == 5.0  # 0² + 1² + 2² around the first reward


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
async def own_redis(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Redis]:
    """A Redis of this test's own: the single-model keys it writes are global names."""
    config = InfraConfig(run_dir=tmp_path_factory.mktemp("legacy"), redis_port=free_port())
    start_redis(config)
    client = Redis.from_url(config.redis_url)
    try:
        yield client
    finally:
        await client.aclose()
        stop(config.run_dir, "redis")


async def test_a_single_model_routers_keys_are_adopted_by_the_default_model(
    own_redis: Redis,
) -> None:
    redis, model = own_redis, "customer-segment"
    experiment = _running(model, "exp-old")
    update = _update(experiment)
    # The layout of the releases before many models.
    await redis.set(f"flywheel:router:experiment:{model}", experiment.model_dump_json())
    await redis.set("flywheel:router:experiment:by-id:exp-old", experiment.model_dump_json())
    await redis.zadd("flywheel:router:experiment:index", {"exp-old": 1.0})
    await redis.set("flywheel:routing:current", update.model_dump_json())
    await redis.hset("flywheel:router:stats:exp-old", "0.1|challenger:assigned", 3)
    await redis.rpush("flywheel:router:looks:exp-old", "{}")
    store, tally = RedisExperimentStore(redis), RedisOutcomeTally(redis)
    assert await store.current(model) is None  # positive control: unseen before adoption

    assert await adopt_single_model_keys(redis, model) == 1
    assert await store.current(model) == experiment
    assert await store.find("exp-old") == experiment
    assert await RoutingStateReader(redis).latest(model) == update
    assert (await tally.stats(model, "exp-old")).challenger.assigned == 3
    assert await redis.llen(f"flywheel:router:{{{model}}}:looks:exp-old") == 1
    left = {_text(k) for k in await redis.keys("*")}
    assert not {k for k in left if "{" not in k} - {EXPERIMENT_INDEX_KEY}
    assert await adopt_single_model_keys(redis, model) == 0  # once only
