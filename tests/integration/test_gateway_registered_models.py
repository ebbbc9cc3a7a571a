"""The gateway's models on the real MLflow and Redis: specs from the registered models,
each model's routing table from its own key."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import mlflow
import pytest
from _support import register_champion
from mlflow.tracking import MlflowClient
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from flywheel.infra import Endpoints
from services.gateway.adapters import MlflowModelRegistry
from services.gateway.fleet import ModelFleet
from services.gateway.metrics import GatewayMetrics
from shared.catalog import ModelCatalog
from shared.events import ExperimentUpdated, routing_state_key
from shared.mlflow_specs import MlflowSpecSource
from shared.routing import RoutingStateReader
from shared.spec import load_spec

pytestmark = pytest.mark.integration

SPEC = load_spec()


@pytest.fixture
async def redis(infra: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(infra.redis_url)
    yield client
    await client.aclose()


def _register(infra: Endpoints, name: str, versions: int) -> None:
    """``name`` with its spec, a champion (version 1) and, for two, a challenger (2)."""
    MlflowSpecSource(infra.mlflow_uri).register(name, SPEC.model_copy(update={"name": name}), "it")
    register_champion(infra, name)
    client = MlflowClient(infra.mlflow_uri)
    if versions == 2:
        first = client.get_model_version(name, "1")
        mlflow.register_model(str(first.source), name)  # the same logged model, version 2
        client.set_registered_model_alias(name, "challenger", "2")


async def test_each_model_loads_its_versions_and_serves_its_own_routing_table(
    infra: Endpoints, redis: Redis
) -> None:
    tag = uuid.uuid4().hex[:8]
    split, alone = f"gw-split-{tag}", f"gw-alone-{tag}"
    _register(infra, split, versions=2)
    _register(infra, alone, versions=1)
    table = ExperimentUpdated(
        producer="router",
        experiment_id=f"exp-{tag}",
        model_name=split,
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.4,
    )
    await redis.set(routing_state_key(split), table.model_dump_json())
    catalog = ModelCatalog(MlflowSpecSource(infra.mlflow_uri))
    fleet = ModelFleet(
        catalog,
        MlflowModelRegistry(infra.mlflow_uri),
        RoutingStateReader(redis),
        GatewayMetrics.create(CollectorRegistry()),
        (f"gw-default-{tag}", SPEC),  # held from the start; its load is start-up's
        max_loaded=8,
        load_timeout_s=60,
    )
    await fleet.serving(split)
    await fleet.serving(alone)
    served_split, served_alone = await fleet.status(split), await fleet.status(alone)
    assert served_split.variants == {
        "champion": {"name": split, "version": "1"},
        "challenger": {"name": split, "version": "2"},
    }
    assert (served_split.experiment_id, served_split.challenger_share) == (f"exp-{tag}", 0.4)
    assert served_alone.variants == {"champion": {"name": alone, "version": "1"}}
    assert (served_alone.experiment_id, served_alone.challenger_share) == (None, 0.0)
    assert (await fleet.spec(alone)).name == alone  # read from its registered model's tags
