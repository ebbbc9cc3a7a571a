"""The gateway's Redis records and MLflow registry adapter against real services."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from redis.asyncio import Redis
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from flywheel.features_cli import feature_hashes, load_into
from flywheel.infra import Endpoints
from services.gateway.adapters import (
    MlflowModelRegistry,
    RedisFeatureStore,
    RedisPredictionRecords,
    ScorerModel,
)
from services.gateway.core import row_from_store
from shared.datasets import generate_customers
from shared.events import PredictionLogged
from shared.spec import load_spec

SPEC = load_spec()

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(infra: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(infra.redis_url)
    yield client
    await client.aclose()


def _logged(request_id: str) -> PredictionLogged:
    return PredictionLogged(
        producer="gateway",
        request_id=request_id,
        model_name="customer-segment",
        version="3",
        variant="challenger",
        features={"age": 30.0, "plan": "basic"},
        predicted_class="steady",
        confidence=0.7,
        latency_ms=2.0,
    )


async def test_records_expire_and_feedback_is_claimed_once(redis: Redis) -> None:
    records = RedisPredictionRecords(redis, ttl_s=60, prefix=f"test:gw:{uuid.uuid4().hex}:")
    event = _logged("req-1")
    await records.remember([event, _logged("req-2")])
    recalled = await records.recall("req-1")
    assert recalled is not None
    assert (recalled.variant, recalled.version, recalled.event_id) == (
        "challenger",
        "3",
        event.event_id,
    )
    assert recalled.features == {}
    assert await records.recall("unknown") is None
    assert await records.claim_feedback("req-1") is True
    assert await records.claim_feedback("req-1") is False
    assert await records.feedback_recorded("req-1") is False
    await records.release_feedback("req-1")
    assert await records.claim_feedback("req-1") is True
    await records.confirm_feedback("req-1")
    assert await records.feedback_recorded("req-1") is True
    assert await records.claim_feedback("req-1") is False
    ttls = [await redis.ttl(key) for key in await redis.keys(f"{records._prefix}*")]
    assert ttls
    assert all(0 < ttl <= 60 for ttl in ttls)


async def test_a_feedback_claim_never_confirmed_lapses(redis: Redis) -> None:
    prefix = f"test:gw:{uuid.uuid4().hex}:"
    records = RedisPredictionRecords(redis, ttl_s=60, prefix=prefix, claim_hold_s=0.2)
    assert await records.claim_feedback("req-1") is True
    assert await records.claim_feedback("req-1") is False
    await asyncio.sleep(0.5)
    # Its gateway died between claiming and publishing: the client's retry counts.
    assert await records.claim_feedback("req-1") is True


def _pipeline() -> Pipeline:
    frame = generate_customers(300, seed=3)
    features = ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(SPEC.numeric_features)),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
        ]
    )
    pipeline = Pipeline([("features", features), ("classifier", LogisticRegression())])
    return pipeline.fit(frame[list(SPEC.feature_names)], frame[SPEC.label])


def test_aliases_resolve_and_versions_load(infra: Endpoints) -> None:
    name = f"test-gateway-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(infra.mlflow_uri)
    mlflow.set_experiment(name)
    registry = MlflowModelRegistry(infra.mlflow_uri)
    pipeline = _pipeline()
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(pipeline, name="model", pip_requirements=["scikit-learn"])
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version
    assert registry.aliases(name) == {"champion": None, "challenger": None}
    MlflowClient(infra.mlflow_uri).set_registered_model_alias(name, "champion", version)
    assert registry.aliases(name) == {"champion": str(version), "challenger": None}
    # Not Flywheel's own pipeline (no TabularEncoder): the generic path, in the spec's order.
    model = registry.load(name, str(version), SPEC.model_copy(update={"name": name}))
    assert isinstance(model, ScorerModel)
    assert (model.flavor, tuple(model.classes_)) == ("sklearn", SPEC.classes)
    frame = generate_customers(5, seed=9)[list(SPEC.feature_names)]
    in_spec_order = [list(pipeline.classes_).index(c) for c in SPEC.classes]
    expected = pipeline.predict_proba(frame)[:, in_spec_order]
    np.testing.assert_allclose(model.predict_proba(frame), expected)


async def test_features_loaded_by_the_cli_are_read_back_by_the_gateway(
    infra: Endpoints, redis: Redis
) -> None:
    import redis as sync_redis

    spec = load_spec()
    frame = generate_customers(20, seed=3)
    frame["customer_id"] = [f"it-{uuid.uuid4().hex[:6]}-{i}" for i in range(20)]
    hashes = feature_hashes(frame, spec, "customer_id")
    client = sync_redis.Redis.from_url(infra.redis_url)
    try:
        assert load_into(client, hashes) == 20
    finally:
        client.close()
    store = RedisFeatureStore(redis)
    entity = frame["customer_id"][4]
    stored = await store.features(entity)
    assert stored is not None
    row = row_from_store(stored, spec)
    assert row["monthly_spend"] == pytest.approx(float(frame["monthly_spend"][4]))
    assert row["plan"] == frame["plan"][4]
    await store.write_segment(entity, "loyal", "7")
    assert await redis.hgetall(f"flywheel:features:{entity}:segment") == {
        b"segment": b"loyal",
        b"version": b"7",
    }
    assert await store.features("nobody-" + uuid.uuid4().hex) is None
