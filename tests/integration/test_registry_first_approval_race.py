"""Two registry replicas approving a model's first versions at once, on real Redis and MLflow:
exactly one becomes champion, the other challenger. And the alias lease itself on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prometheus_client import CollectorRegistry

from flywheel.infra import Endpoints
from services.registry.adapters import (
    MlflowCandidateLoader,
    MlflowModelRegistry,
    RedisAliasLeases,
    alias_lease_key,
)
from services.registry.gates import GatePolicy
from services.registry.handlers import RegistryHandlers
from services.registry.metrics import RegistryMetrics
from services.trainer.adapters import MlflowModelStore
from services.trainer.core import TrainingConfig, data_version, train
from services.trainer.ports import RunContext
from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec
from shared.datasets import generate_customers, write_batch
from shared.errors import DependencyUnavailableError
from shared.events import ModelApproved, ModelTrained
from shared.redis_client import RedisClient, redis_client
from shared.spec import load_spec
from shared.testing import RecordingPublisher

pytestmark = pytest.mark.integration

SPEC = load_spec()
#: How long a replica about to set an alias waits for the other to get there too.
MEET_S = 4.0


@pytest.fixture
async def clients(infra: Endpoints) -> AsyncIterator[tuple[RedisClient, RedisClient]]:
    """Two Redis clients, as two registry processes hold."""
    first, second = redis_client(infra.redis_url), redis_client(infra.redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


class MeetingRegistry(MlflowModelRegistry):
    """MLflow's registry, whose first alias write waits (up to ``MEET_S``) for the other
    replica's: without a lease both have read "no champion" by then, the race made sure."""

    def __init__(self, tracking_uri: str, meeting: threading.Barrier) -> None:
        super().__init__(tracking_uri)
        self._meeting, self._met = meeting, False

    def set_alias(self, name: str, alias: str, version: str) -> None:
        if not self._met:
            self._met = True
            # Broken by the timeout when the other holds the lease: go on alone.
            with contextlib.suppress(threading.BrokenBarrierError):
                self._meeting.wait()
        super().set_alias(name, alias, version)


def _logged(infra: Endpoints, name: str, tmp_path: Path, seed: int) -> ModelTrained:
    frame = generate_customers(1500, seed)
    ref = write_batch(frame, tmp_path / f"b{seed}.parquet")
    model = train(frame, SPEC, TrainingConfig(candidates=("logistic_regression",)))
    context = RunContext(name, data_version([ref.sha256]), "data", "e", "c", (ref,))
    run_id = MlflowModelStore(infra.mlflow_uri).log_training(model, context)
    return ModelTrained(
        producer="test",
        model_name=name,
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        algorithm=model.algorithm,
        metrics=model.metrics,
        data_version=context.data_version,
    )


def _replica(
    infra: Endpoints, name: str, redis: RedisClient, meeting: threading.Barrier
) -> tuple[RegistryHandlers, RecordingPublisher]:
    publisher = RecordingPublisher()
    handlers = RegistryHandlers(
        models=MeetingRegistry(infra.mlflow_uri, meeting),
        loader=MlflowCandidateLoader(infra.mlflow_uri),
        catalog=ModelCatalog(InMemorySpecSource({name: RegisteredSpec(1, SPEC)})),
        publisher=publisher,
        metrics=RegistryMetrics.create(CollectorRegistry()),
        policy=GatePolicy(min_accuracy=0.0, latency_budget_ms=1000.0, latency_samples=20),
        leases=RedisAliasLeases(redis),
    )
    return handlers, publisher


async def test_two_replicas_approving_first_versions_at_once_make_one_champion(
    infra: Endpoints, clients: tuple[RedisClient, RedisClient], tmp_path: Path
) -> None:
    name = f"it-race-{uuid.uuid4().hex[:8]}"
    trained = [_logged(infra, name, tmp_path, seed) for seed in (1, 2)]
    meeting = threading.Barrier(2, timeout=MEET_S)
    replicas = [_replica(infra, name, redis, meeting) for redis in clients]

    approving = zip(replicas, trained, strict=True)
    await asyncio.gather(*(handlers.on_model_trained(event) for (handlers, _), event in approving))

    approvals = [e for _, publisher in replicas for e in publisher.events]
    assert all(isinstance(e, ModelApproved) for e in approvals)
    by_alias = {e.alias: e for e in approvals if isinstance(e, ModelApproved)}
    assert sorted(by_alias) == ["challenger", "champion"], approvals
    champion = by_alias["champion"].version
    assert by_alias["challenger"].champion_version == champion
    aliases = MlflowClient(infra.mlflow_uri).get_registered_model(name).aliases
    assert {alias: str(v) for alias, v in aliases.items()} == {
        "champion": champion,
        "challenger": by_alias["challenger"].version,
    }


async def test_a_second_holder_waits_for_the_first_to_release(
    clients: tuple[RedisClient, RedisClient],
) -> None:
    model = f"lease-{uuid.uuid4().hex[:8]}"
    first, second = (RedisAliasLeases(c, ttl_s=5.0, wait_s=5.0, poll_s=0.01) for c in clients)
    steps: list[str] = []
    entered = asyncio.Event()

    async def hold_first() -> None:
        async with first.hold(model):
            entered.set()
            steps.append("first in")
            await asyncio.sleep(0.3)
            steps.append("first out")

    async def hold_second() -> None:
        await entered.wait()
        async with second.hold(model):
            steps.append("second in")

    await asyncio.gather(hold_first(), hold_second())
    assert steps == ["first in", "first out", "second in"]
    assert await clients[0].get(alias_lease_key(model)) is None  # released


async def test_a_held_lease_is_renewed_past_its_ttl_and_release_spares_anothers_token(
    clients: tuple[RedisClient, RedisClient],
) -> None:
    model = f"lease-{uuid.uuid4().hex[:8]}"
    holder = RedisAliasLeases(clients[0], ttl_s=0.3, wait_s=1.0, poll_s=0.01)
    other = RedisAliasLeases(clients[1], ttl_s=0.3, wait_s=0.5, poll_s=0.01)
    async with holder.hold(model):
        with pytest.raises(DependencyUnavailableError, match="held by another replica"):
            async with other.hold(model):  # 0.5 s of waiting: longer than the TTL
                pass
        # As if the lease had lapsed and another replica had taken it meanwhile.
        await clients[1].set(alias_lease_key(model), "someone-else")
    assert await clients[0].get(alias_lease_key(model)) == b"someone-else"
