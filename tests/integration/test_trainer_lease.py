"""Two trainer replicas on one real Redis (single and cluster): the training lease is renewed
past its TTL, a lost lease publishes nothing, and one schedule period retrains once.

The trainings are real (logistic regression on a small batch); the model store is a fake
that takes as long as a test needs, so a training outlives the lease's TTL in a second.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.trainer.adapters import (
    FileBatchSource,
    RedisBatchHistory,
    RedisPendingTriggers,
    RedisTrainingLock,
)
from services.trainer.coalesce import CoalescePolicy
from services.trainer.core import TrainedModel, TrainingConfig
from services.trainer.handlers import TrainerHandlers, TrainerPorts
from services.trainer.metrics import TrainerMetrics
from services.trainer.ports import RunContext
from services.trainer.scheduler import PendingTrainingScheduler
from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec
from shared.datasets import generate_customers, write_batch
from shared.events import ModelTrained, RetrainModel, model_key
from shared.redis_client import RedisClient, redis_client
from shared.spec import load_spec
from shared.testing import RecordingPublisher

pytestmark = pytest.mark.integration

TTL_S = 0.6
"""The lease's TTL: every training below outlives it."""
HEARTBEAT_S = 0.15


@dataclass
class SlowStore:
    """Logs nothing; takes ``seconds`` to "log" a run, like a slow MLflow upload."""

    seconds: float = 0.0

    def log_training(self, model: TrainedModel, context: RunContext) -> str:
        time.sleep(self.seconds)
        return f"run-{uuid.uuid4().hex[:8]}"


@dataclass
class Replica:
    """One trainer replica's handlers, on the shared Redis, with what it published."""

    handlers: TrainerHandlers
    publisher: RecordingPublisher
    store: SlowStore
    registry: CollectorRegistry

    def trained(self) -> list[ModelTrained]:
        return [e for e in self.publisher.events if isinstance(e, ModelTrained)]

    def lease_lost(self, model: str) -> float:
        value = self.registry.get_sample_value(
            "flywheel_trainer_lease_lost_total", {"model_name": model}
        )
        return value or 0.0


def _replica(redis: RedisClient, model: str) -> Replica:
    spec = load_spec().model_copy(update={"name": model})
    catalog = ModelCatalog(InMemorySpecSource({model: RegisteredSpec(1, spec)}))
    publisher, store, registry = RecordingPublisher(), SlowStore(), CollectorRegistry()
    ports = TrainerPorts(
        FileBatchSource(),
        RedisBatchHistory(redis, cap=10),
        RedisPendingTriggers(redis, once_ttl_s=60),
        RedisTrainingLock(redis, ttl_s=TTL_S, heartbeat_s=HEARTBEAT_S),
        store,
        publisher,
    )
    handlers = TrainerHandlers(
        ports,
        catalog,
        TrainingConfig(),
        window_batches=2,
        metrics=TrainerMetrics.create(registry),
        policy=CoalescePolicy(window_s=0, max_wait_s=1, min_rows=1),
    )
    return Replica(handlers, publisher, store, registry)


@pytest.fixture
async def model(stateful_redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, RedisClient]]:
    """A fresh model with one batch recorded, and the Redis client; its keys go after."""
    name, redis = f"lease-{uuid.uuid4().hex[:8]}", redis_client(stateful_redis_url)
    batch = write_batch(generate_customers(200, 1), tmp_path / "batch.parquet")
    await RedisBatchHistory(redis, cap=10).record(name, batch)
    try:
        yield name, redis
    finally:
        kinds = ["batches", "pending", "outbox", "lock", "schedule:1"]
        await redis.delete(*(model_key("trainer", name, kind) for kind in kinds))
        await redis.aclose()


async def _until_held(redis: RedisClient, name: str) -> None:
    """Wait until a replica holds the model's lease (its training started)."""
    for _ in range(1000):
        if await redis.exists(RedisTrainingLock.key(name)):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no replica took the lease of {name}")


async def test_the_lease_is_renewed_past_its_ttl_so_a_second_replica_cannot_start(
    model: tuple[str, RedisClient],
) -> None:
    name, redis = model
    first, second = _replica(redis, name), _replica(redis, name)
    first.store.seconds = 4 * TTL_S
    request = RetrainModel(producer="cli", model_name=name)
    await first.handlers.on_retrain_requested(request)
    await second.handlers.on_retrain_requested(request)  # redelivered to the other replica

    training = asyncio.create_task(first.handlers.train_pending(name))
    await _until_held(redis, name)
    started = time.monotonic()
    turns, last_turn = [], started
    while not training.done():  # the second replica's turns while the first trains
        turns.append(await second.handlers.train_pending(name))
        last_turn = time.monotonic()
        await asyncio.sleep(HEARTBEAT_S / 2)
    assert await training
    assert last_turn - started >= 3 * TTL_S  # it kept trying long after a TTL went by
    assert not any(turns)
    assert [t.causation_id for t in first.trained()] == [request.event_id]
    assert second.publisher.events == []
    assert not await second.handlers.train_pending(name)  # nothing left: trained once
    assert not await redis.exists(RedisTrainingLock.key(name))  # released at the end


async def test_a_lost_lease_aborts_the_publication_and_the_holder_trains_once(
    model: tuple[str, RedisClient],
) -> None:
    name, redis = model
    paused, successor = _replica(redis, name), _replica(redis, name)
    paused.store.seconds = 3 * TTL_S
    drift_like = RetrainModel(producer="cli", model_name=name, reason="drift")
    await paused.handlers.on_retrain_requested(drift_like)

    training = asyncio.create_task(paused.handlers.train_pending(name))
    await _until_held(redis, name)
    # As if the first replica stalled past its TTL: the lease expires, a successor takes it.
    await redis.delete(RedisTrainingLock.key(name))
    assert await successor.handlers.train_pending(name)
    assert not await asyncio.wait_for(training, timeout=30)

    assert paused.publisher.events == []
    assert paused.lease_lost(name) == 1
    assert [t.causation_id for t in successor.trained()] == [drift_like.event_id]
    pending = RedisPendingTriggers(redis)
    assert await pending.waiting(name) == []
    assert await pending.staged(name) is None


async def test_two_replicas_timers_retrain_once_in_a_period(
    model: tuple[str, RedisClient],
) -> None:
    name, redis = model
    replicas = [_replica(redis, name) for _ in range(2)]
    claims: list[bool] = []

    class Claiming(TrainerHandlers):
        async def on_schedule(self, model_name: str, period: int) -> RetrainModel | None:
            tick = await super().on_schedule(model_name, period)
            claims.append(tick is not None)
            return tick

    wall = [3599.9]  # the last moment of period 0 of an hourly schedule
    timers = []
    for replica in replicas:
        await replica.handlers.catalog.spec(name)  # each replica knows the model
        handlers = Claiming(*(getattr(replica.handlers, f.name) for f in fields(TrainerHandlers)))
        timers.append(
            PendingTrainingScheduler(
                handlers, tick_s=0.02, every_s=3600, wall_clock=lambda: wall[0]
            )
        )
    for timer in timers:
        await timer.start()
    wall[0] = 3600.1  # period 1 begins on both clocks
    trained: list[ModelTrained] = []
    for _ in range(1500):  # until both timers claimed and the training is published
        trained = [t for r in replicas for t in r.trained()]
        if len(claims) == 2 and trained:
            break
        await asyncio.sleep(0.02)
    for timer in timers:
        await timer.stop()

    assert sorted(claims) == [False, True]
    assert [t.trigger for t in trained] == ["schedule"]
    assert await redis.exists(model_key("trainer", name, "schedule:1"))
    assert await RedisPendingTriggers(redis).waiting(name) == []
