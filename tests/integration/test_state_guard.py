"""A Redis emptied under the trainer and the gateway: the loss is noticed, the batches come back.

Both guards run on a Redis of this test's own (started as ``flywheel up`` starts
it, on a free port), so its ``FLUSHALL`` touches nobody else's keys; the
trainer's durable source is the session's MLflow, holding a real training run.
Before the guards an emptied Redis went unnoticed: every service stayed ready
and a drift retrain dead-lettered with "no batches recorded".
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from _support import free_port
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from flywheel.infra import Endpoints, InfraConfig
from flywheel.infra.processes import stop
from flywheel.infra.redis import start_redis
from services.gateway.recovery import GatewayStateGuard
from services.trainer.adapters import MlflowModelStore, RedisBatchHistory
from services.trainer.core import TrainingConfig, combine_batches, data_version, train
from services.trainer.ports import RunContext
from services.trainer.recovery import TrainerStateGuard, mlflow_last_trained
from shared.datasets import generate_customers, write_batch
from shared.spec import load_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfraConfig]:
    config = InfraConfig(run_dir=tmp_path_factory.mktemp("state-guard"), redis_port=free_port())
    start_redis(config)
    try:
        yield config
    finally:
        stop(config.run_dir, "redis")


@pytest.fixture
async def redis(own_redis: InfraConfig) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_an_emptied_redis_is_noticed_and_the_batch_list_rebuilt_from_mlflow(
    infra: Endpoints, redis: Redis, tmp_path: Path
) -> None:
    spec, name = load_spec(), f"test-guard-{uuid.uuid4().hex[:8]}"
    frames = [generate_customers(300, seed) for seed in (1, 2)]
    refs = [write_batch(frame, tmp_path / f"b{i}.parquet") for i, frame in enumerate(frames)]
    model = train(combine_batches(frames), spec, TrainingConfig())
    context = RunContext(name, data_version(r.sha256 for r in refs), "data", "e", "c", tuple(refs))
    MlflowModelStore(infra.mlflow_uri, spec.label).log_training(model, context)

    registry = CollectorRegistry()
    history = RedisBatchHistory(redis, cap=10)
    trainer = TrainerStateGuard(
        redis, history, mlflow_last_trained(infra.mlflow_uri), registry, name, period_s=0.1
    )
    gateway = GatewayStateGuard(redis, lambda: False, registry, name, period_s=0.1)
    for ref in refs:
        await history.record(name, ref)
    await trainer.check()
    await gateway.check()
    assert await trainer.ready()
    assert _lost(registry, "trainer", name, rebuilt="true") == 0  # a first start: nothing lost

    await redis.flushall()
    assert await history.recent(name, 10) == []
    assert not await trainer.ready()  # the marker went with the data
    await trainer.check()
    await gateway.check()

    assert await history.recent(name, 10) == refs
    assert await trainer.ready()
    assert _lost(registry, "trainer", name, rebuilt="true") == 1
    assert _lost(registry, "gateway", name) == 1


def _lost(registry: CollectorRegistry, service: str, model: str, **labels: str) -> float:
    value = registry.get_sample_value(
        f"{service}_state_lost_total", {"model_name": model, **labels}
    )
    return value or 0.0
