"""Flywheel on a three-node Redis Cluster: the client is chosen by asking the server, and
the operations whose keys used to span slots (refused there with CROSSSLOT, or sent to
a node that does not own the key) work.

Those operations: the gateway's batch of prediction records (one script over many
request ids), the trainer's and the router's adoption of single-model keys (RENAMENX
and RENAME from untagged to tagged keys), the batch idempotency markers and the
feature store loader (pipelines over every node, which a single-server client cannot
send). Every stateful adapter test also runs on the cluster (``stateful_redis_url``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _support import matching_keys
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.infra import Endpoints
from services.gateway.adapters import RedisPredictionRecords
from services.router.adapters import RedisExperimentStore, adopt_single_model_keys
from services.router.core import Experiment
from services.trainer.adapters import RedisBatchHistory, adopt_legacy_keys
from shared.datasets import generate_customers, write_batch
from shared.events import ExperimentUpdated, PredictionLogged, routing_state_key
from shared.messaging import ProcessedEvents
from shared.redis_client import RedisClient, cluster_enabled, redis_client, slot_groups
from shared.routing import RoutingStateReader
from shared.runtime import build_runtime
from shared.settings import BaseServiceSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster(redis_cluster: str) -> AsyncIterator[RedisClient]:
    client = redis_client(redis_cluster)
    yield client
    await client.aclose()


async def test_auto_asks_the_server_and_true_or_false_decide_alone(
    infra: Endpoints, redis_cluster: str
) -> None:
    assert (cluster_enabled(redis_cluster), cluster_enabled(infra.redis_url)) == (True, False)
    chosen = {
        (url, mode): redis_client(url, mode)
        for url in (redis_cluster, infra.redis_url)
        for mode in ("auto", "true", "false")
    }
    try:
        assert isinstance(chosen[redis_cluster, "auto"], RedisCluster)
        assert isinstance(chosen[infra.redis_url, "auto"], Redis)
        assert isinstance(chosen[infra.redis_url, "true"], RedisCluster)  # as told
        assert isinstance(chosen[redis_cluster, "false"], Redis)
        assert await chosen[redis_cluster, "auto"].ping()
    finally:
        for client in chosen.values():
            await client.aclose()


def _logged(request_id: str) -> PredictionLogged:
    return PredictionLogged(
        producer="gateway",
        request_id=request_id,
        model_name="customer-segment",
        version="3",
        variant="champion",
        features={"age": 30.0},
        predicted_class="steady",
        confidence=0.7,
        latency_ms=2.0,
    )


async def test_a_batch_of_prediction_records_over_many_slots_is_written(
    cluster: RedisClient,
) -> None:
    records = RedisPredictionRecords(cluster, ttl_s=60, prefix=f"test:gw:{uuid.uuid4().hex}:")
    events = [_logged(f"req-{i}") for i in range(40)]
    keys = [records._key("prediction", e.request_id) for e in events]
    assert len(slot_groups(cluster, keys)) > 1  # positive control: one script would be refused
    await records.remember(events)
    recalled = [await records.recall(e.request_id) for e in events]
    assert [r.event_id if r else None for r in recalled] == [e.event_id for e in events]
    ttls = [await cluster.ttl(key) for key in keys]
    assert all(0 < ttl <= 60 for ttl in ttls)


async def test_the_trainers_single_model_keys_are_adopted_across_slots(
    cluster: RedisClient, tmp_path: Path
) -> None:
    model = f"test-{uuid.uuid4().hex[:8]}"
    ref = write_batch(generate_customers(30, 1), tmp_path / "b.parquet")
    legacy = f"flywheel:trainer:batches:{model}"
    assert key_slot(legacy.encode()) != key_slot(RedisBatchHistory.key(model).encode())
    await cluster.rpush(legacy, ref.model_dump_json())
    assert await adopt_legacy_keys(cluster, model) == ["batches"]
    assert await RedisBatchHistory(cluster, cap=5).recent(model, 10) == [ref]
    assert not await cluster.exists(legacy)


async def test_the_routers_single_model_keys_are_adopted_across_slots(
    cluster: RedisClient,
) -> None:
    model, experiment_id = f"test-{uuid.uuid4().hex[:8]}", f"exp-{uuid.uuid4().hex[:6]}"
    experiment = Experiment(
        experiment_id=experiment_id,
        model_name=model,
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.1,
        opened_at=datetime.now(UTC),
    )
    update = ExperimentUpdated(
        producer="router",
        experiment_id=experiment_id,
        model_name=model,
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.1,
    )
    raw = experiment.model_dump_json()
    await cluster.set(f"flywheel:router:experiment:{model}", raw)
    await cluster.set(f"flywheel:router:experiment:by-id:{experiment_id}", raw)
    await cluster.zadd("flywheel:router:experiment:index", {experiment_id: 1.0})
    await cluster.set("flywheel:routing:current", update.model_dump_json())
    await cluster.hset(f"flywheel:router:stats:{experiment_id}", "0.1|challenger:assigned", 3)
    await cluster.rpush(f"flywheel:router:looks:{experiment_id}", "{}")
    index = f"test:router:{uuid.uuid4().hex}"

    assert await adopt_single_model_keys(cluster, model, index_key=index) == 1

    assert await RedisExperimentStore(cluster, index_key=index).current(model) == experiment
    assert await RoutingStateReader(cluster).latest(model) == update
    assert await cluster.llen(f"flywheel:router:{{{model}}}:looks:{experiment_id}") == 1
    assert await matching_keys(cluster, f"flywheel:router:*{experiment_id}") == {
        f"flywheel:router:{{{model}}}:experiment:{experiment_id}",
        f"flywheel:router:{{{model}}}:stats:{experiment_id}",
        f"flywheel:router:{{{model}}}:looks:{experiment_id}",
    }
    assert routing_state_key(model) in await matching_keys(cluster, f"*{{{model}}}*")


async def test_a_services_runtime_uses_the_cluster_for_its_batch_markers(
    redis_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_cluster)
    monkeypatch.delenv("REDIS_CLUSTER", raising=False)
    runtime = build_runtime("cluster-test", BaseServiceSettings())
    try:
        assert isinstance(runtime.redis, RedisCluster)
        processed = ProcessedEvents(runtime.redis, "cluster-test", ttl_s=60)
        ids = [f"{uuid.uuid4().hex}-{i}" for i in range(30)]  # markers on every node
        await processed.mark_many(ids[:20])
        assert await processed.seen_many(ids) == set(ids[:20])
    finally:
        await runtime.redis.aclose()


def test_flywheel_features_load_writes_to_the_cluster(
    redis_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis as sync_redis

    frame = generate_customers(30, seed=3)
    frame["customer_id"] = [f"it-{uuid.uuid4().hex[:6]}-{i}" for i in range(30)]
    frame.to_csv(tmp_path / "features.csv", index=False)
    monkeypatch.setenv("REDIS_URL", redis_cluster)
    monkeypatch.delenv("REDIS_CLUSTER", raising=False)

    result = CliRunner().invoke(app, ["features", "load", str(tmp_path / "features.csv")])

    assert result.exit_code == 0, result.output
    client = sync_redis.RedisCluster.from_url(redis_cluster, decode_responses=True)
    try:
        stored = [client.hget(f"flywheel:features:{i}", "plan") for i in frame["customer_id"]]
        assert stored == list(frame["plan"])
    finally:
        client.close()
