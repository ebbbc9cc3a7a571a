"""The trainer's adapters against real MLflow and Redis."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from redis.asyncio import Redis

from flywheel.infra import Endpoints
from services.trainer.adapters import (
    MlflowModelStore,
    RedisBatchHistory,
    RedisPendingTriggers,
    RedisTrainingLock,
    adopt_legacy_keys,
)
from services.trainer.coalesce import PendingArrival
from services.trainer.core import TrainingConfig, combine_batches, data_version, train
from services.trainer.ports import RunContext
from services.trainer.recovery import mlflow_last_trained
from shared.datasets import generate_customers, write_batch
from shared.errors import DependencyUnavailableError
from shared.events import DataArrived
from shared.spec import load_spec

pytestmark = pytest.mark.integration


def test_a_trained_pipeline_is_logged_with_tags_metrics_and_reference(
    infra: Endpoints, tmp_path: Path
) -> None:
    spec, name = load_spec(), f"test-trainer-{uuid.uuid4().hex[:8]}"
    refs = [write_batch(generate_customers(1000, s), tmp_path / f"b{s}.parquet") for s in (1, 2)]
    model = train(
        combine_batches([generate_customers(1000, s) for s in (1, 2)]), spec, TrainingConfig()
    )
    context = RunContext(
        name, data_version(r.sha256 for r in refs), "data", "e1", "c1", tuple(refs)
    )

    started = time.perf_counter()
    run_id = MlflowModelStore(infra.mlflow_uri).log_training(model, context)
    assert time.perf_counter() - started < 60

    run = MlflowClient(infra.mlflow_uri).get_run(run_id)
    assert run.data.tags["flywheel.correlation_id"] == "c1"
    assert run.data.tags["flywheel.data_version"] == context.data_version
    assert run.data.metrics["accuracy"] == pytest.approx(model.metrics.accuracy)
    loaded = mlflow.sklearn.load_model(f"runs:/{run_id}/model")
    sample = generate_customers(50, 9)[list(spec.feature_names)]
    assert list(loaded.predict(sample)) == list(model.pipeline.predict(sample))
    reference = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="reference/features.parquet", dst_path=str(tmp_path)
    )
    assert list(pd.read_parquet(reference).columns) == list(spec.feature_names)


async def test_batch_history_keeps_the_newest_without_duplicates(
    infra: Endpoints, tmp_path: Path
) -> None:
    redis, model = Redis.from_url(infra.redis_url), f"test-{uuid.uuid4().hex[:8]}"
    history = RedisBatchHistory(redis, cap=3)
    refs = [write_batch(generate_customers(30, s), tmp_path / f"b{s}.parquet") for s in range(5)]
    try:
        for ref in [*refs, refs[2]]:
            await history.record(model, ref)
        assert await history.recent(model, 10) == [refs[3], refs[4], refs[2]]
        assert await history.recent(model, 2) == [refs[4], refs[2]]
    finally:
        await redis.delete(RedisBatchHistory.key(model))
        await redis.aclose()


async def test_batch_history_knows_a_batch_by_its_content_hash(
    infra: Endpoints, tmp_path: Path
) -> None:
    redis, model = Redis.from_url(infra.redis_url), f"test-{uuid.uuid4().hex[:8]}"
    history = RedisBatchHistory(redis, cap=5)
    first = write_batch(generate_customers(30, 1), tmp_path / "b.parquet")
    copy = tmp_path / "same-bytes.parquet"
    copy.write_bytes((tmp_path / "b.parquet").read_bytes())
    again = first.model_copy(update={"uri": copy.as_uri()})
    try:
        assert await history.record(model, first)
        assert not await history.record(model, again)
        assert await history.recent(model, 10) == [again]
    finally:
        await redis.delete(RedisBatchHistory.key(model))
        await redis.aclose()


async def test_training_lock_serialises_and_gives_up_after_its_wait(infra: Endpoints) -> None:
    redis, model = Redis.from_url(infra.redis_url), f"test-{uuid.uuid4().hex[:8]}"
    lock = RedisTrainingLock(redis, ttl_s=10, wait_s=0.3)
    try:
        async with lock.hold(model):
            with pytest.raises(DependencyUnavailableError):
                async with lock.hold(model):
                    pass
        waiting = RedisTrainingLock(redis, ttl_s=10, wait_s=5)
        order: list[str] = []

        async def train_for(tag: str) -> None:
            async with waiting.hold(model):
                order.append(f"{tag}-in")
                await asyncio.sleep(0.2)
                order.append(f"{tag}-out")

        await asyncio.gather(train_for("a"), train_for("b"))
        assert order in (["a-in", "a-out", "b-in", "b-out"], ["b-in", "b-out", "a-in", "a-out"])
    finally:
        await redis.aclose()


def test_an_unreachable_mlflow_is_a_dependency_outage_not_a_bad_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    spec = load_spec()
    ref = write_batch(generate_customers(200, 1), tmp_path / "b.parquet")
    model = train(generate_customers(200, 1), spec, TrainingConfig())
    context = RunContext("m", data_version([ref.sha256]), "data", "e", "c", (ref,))
    # The store points MLflow's process-wide tracking URI (and, in MLflow 3, the
    # MLFLOW_TRACKING_URI variable) at the dead server: put both back afterwards, or
    # every later test in this process talks to nothing.
    original = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", original)
    try:
        with pytest.raises(DependencyUnavailableError, match="MLflow unreachable"):
            MlflowModelStore(dead).log_training(model, context)
    finally:
        mlflow.set_tracking_uri(original)


async def test_pending_arrivals_survive_in_redis_until_removed(
    infra: Endpoints, tmp_path: Path
) -> None:
    redis, model = Redis.from_url(infra.redis_url), f"test-{uuid.uuid4().hex[:8]}"
    pending = RedisPendingTriggers(redis)
    refs = [write_batch(generate_customers(30, s), tmp_path / f"b{s}.parquet") for s in range(3)]
    arrivals = [
        PendingArrival(DataArrived(producer="t", dataset=r), 100.0 + i) for i, r in enumerate(refs)
    ]
    try:
        for arrival in arrivals:
            await pending.add(model, arrival)
        assert await pending.waiting(model) == arrivals
        await pending.remove(model, arrivals[:2])
        assert await pending.waiting(model) == arrivals[2:]
    finally:
        await redis.delete(RedisPendingTriggers.key(model))
        await redis.aclose()


async def test_one_models_lock_never_holds_up_another(infra: Endpoints) -> None:
    redis, model = Redis.from_url(infra.redis_url), f"test-{uuid.uuid4().hex[:8]}"
    lock = RedisTrainingLock(redis, ttl_s=10, wait_s=0.3)
    try:
        async with lock.hold(model):
            async with lock.hold(f"{model}-other"):  # would raise if it shared the key
                assert await redis.exists(RedisTrainingLock.key(f"{model}-other"))
            assert RedisTrainingLock.key(model) == f"flywheel:trainer:{{{model}}}:lock"
    finally:
        await redis.aclose()


async def test_the_single_model_keys_are_adopted_by_the_default_model(
    infra: Endpoints, tmp_path: Path
) -> None:
    redis, model = Redis.from_url(infra.redis_url), f"test-{uuid.uuid4().hex[:8]}"
    ref = write_batch(generate_customers(30, 1), tmp_path / "b.parquet")
    arrival = PendingArrival(DataArrived(producer="t", dataset=ref), 100.0)
    history, pending = RedisBatchHistory(redis, cap=5), RedisPendingTriggers(redis)
    try:
        # As the single-model release left them: unhashed keys named after the model.
        await history.record(model, ref)
        await pending.add(model, arrival)
        await redis.rename(RedisBatchHistory.key(model), f"flywheel:trainer:batches:{model}")
        await redis.rename(RedisPendingTriggers.key(model), f"flywheel:trainer:pending:{model}")
        assert await history.recent(model, 10) == []  # positive control: not seen yet

        assert await adopt_legacy_keys(redis, model) == ["batches", "pending"]
        assert await history.recent(model, 10) == [ref]
        assert await pending.waiting(model) == [arrival]
        assert RedisBatchHistory.key(model) == f"flywheel:trainer:{{{model}}}:batches"
        assert await adopt_legacy_keys(redis, model) == []  # nothing left to move
    finally:
        await redis.delete(RedisBatchHistory.key(model), RedisPendingTriggers.key(model))
        await redis.aclose()


def test_each_models_runs_are_in_its_own_experiment_and_recovered_separately(
    infra: Endpoints, tmp_path: Path
) -> None:
    spec, store = load_spec(), MlflowModelStore(infra.mlflow_uri)
    model = train(generate_customers(300, 1), spec, TrainingConfig())
    names = [f"test-trainer-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    refs = {}
    for seed, name in enumerate(names):
        refs[name] = write_batch(generate_customers(30, seed), tmp_path / f"{name}.parquet")
        batches = (refs[name],)
        context = RunContext(name, data_version([refs[name].sha256]), "data", "e", "c", batches)
        store.log_training(model, context)
    last_trained = mlflow_last_trained(infra.mlflow_uri)
    for name in names:
        assert last_trained(name) == [refs[name]]
    assert last_trained(f"test-trainer-{uuid.uuid4().hex[:8]}") is None  # never trained
