"""Router replicas on one Redis: experiments are saved by compare-and-set, so two of them
deciding on one experiment at once never both win, and its verdict is carried out once.

Each test runs on the single Redis and on the three-node Redis Cluster (the script
touches one model's slot only)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from services.router.adapters import RedisExperimentStore, RedisOutcomeTally
from services.router.core import Experiment
from services.router.handlers import OutcomeHandler, to_update
from services.router.metrics import RouterMetrics
from services.router.revisions import StaleExperimentError, saved_as
from shared.events import ExperimentUpdated
from shared.redis_client import RedisClient, redis_client
from shared.testing import RecordingPublisher

pytestmark = pytest.mark.integration


@pytest.fixture
async def clients(stateful_redis_url: str) -> AsyncIterator[tuple[RedisClient, RedisClient]]:
    """Two clients, as two router processes hold."""
    first, second = redis_client(stateful_redis_url), redis_client(stateful_redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


def _running(model: str, opened_at: datetime | None = None) -> Experiment:
    return Experiment(
        experiment_id=f"exp-{uuid.uuid4().hex[:8]}",
        model_name=model,
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.05,
        opened_at=opened_at or datetime.now(UTC),
    )


def _ended(experiment: Experiment, status: str) -> Experiment:
    return experiment.model_copy(update={"status": status, "challenger_share": 0.0})


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


async def test_two_stores_concluding_one_experiment_at_once_one_wins_the_other_is_stale(
    clients: tuple[RedisClient, RedisClient],
) -> None:
    index = f"test:router:{uuid.uuid4().hex}"
    first, second = (RedisExperimentStore(c, index_key=index) for c in clients)
    model = f"cas-{uuid.uuid4().hex[:8]}"
    opened = _running(model)
    await first.save(opened, _update(opened))
    read_first = await first.get(model, opened.experiment_id)
    read_second = await second.get(model, opened.experiment_id)
    assert read_first is not None
    assert read_second is not None
    promoted, rolled_back = _ended(read_first, "promoted"), _ended(read_second, "rolled_back")
    results = await asyncio.gather(
        first.save(promoted, _update(promoted)),
        second.save(rolled_back, _update(rolled_back)),
        return_exceptions=True,
    )
    stale = [r for r in results if isinstance(r, StaleExperimentError)]
    assert len(stale) == 1, results
    assert results.count(None) == 1
    winner = promoted if results[0] is None else rolled_back
    stored = await first.get(model, opened.experiment_id)
    assert stored == saved_as(winner)
    assert stored is not None
    assert stored.revision == 2
    # The routing table and the current experiment are the winner's, never a mix.
    assert await second.current(model) == stored
    table = await second.routing_table(model)
    assert table is not None
    assert table.status == winner.status
    # The loser reads again and decides on what the winner left.
    again = await second.get(model, opened.experiment_id)
    assert again is not None
    await second.save(again.model_copy(update={"reasons": ("read_again",)}), None)


async def test_an_older_experiment_saved_later_leaves_the_newer_one_current(
    clients: tuple[RedisClient, RedisClient],
) -> None:
    store = RedisExperimentStore(clients[0], index_key=f"test:router:{uuid.uuid4().hex}")
    model = f"cas-{uuid.uuid4().hex[:8]}"
    older, newer = _running(model), _running(model)
    await store.save(older, _update(older))
    await store.save(newer, _update(newer))  # a new experiment takes the model over
    concluded = _ended(saved_as(older), "rolled_back")
    await store.save(concluded, _update(concluded))
    assert await store.get(model, older.experiment_id) == saved_as(concluded)
    assert await store.current(model) == saved_as(newer)
    table = await store.routing_table(model)
    assert table is not None
    assert table.experiment_id == newer.experiment_id


class RecordingAliases:
    """Alias moves, recorded (the MLflow registry's part is not what is tested here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def promote(self, model_name: str, version: str, previous: str) -> None:
        self.calls.append(("promote", version))

    def drop_challenger(self, model_name: str, version: str) -> None:
        self.calls.append(("drop_challenger", version))


async def test_two_routers_looking_at_one_experiment_at_once_carry_out_one_verdict(
    clients: tuple[RedisClient, RedisClient],
) -> None:
    index = f"test:router:{uuid.uuid4().hex}"
    model = f"cas-{uuid.uuid4().hex[:8]}"
    # Past its longest duration: the next look of either router ends it (inconclusive).
    overdue = _running(model, datetime.now(UTC) - timedelta(days=8))
    stores = [RedisExperimentStore(client, index_key=index) for client in clients]
    aliases = [RecordingAliases(), RecordingAliases()]
    publishers = [RecordingPublisher(), RecordingPublisher()]
    handlers = [
        OutcomeHandler(
            store,
            RedisOutcomeTally(client),
            moves,
            publisher,
            RouterMetrics.create(CollectorRegistry()),
        )
        for client, store, moves, publisher in zip(
            clients, stores, aliases, publishers, strict=True
        )
    ]
    first_store = stores[0]
    await first_store.save(overdue, to_update(overdue, _update(overdue)))
    await asyncio.gather(*(handler.tick() for handler in handlers))
    published = [event for publisher in publishers for event in publisher.events]
    verdicts = [
        e for e in published if isinstance(e, ExperimentUpdated) and e.status == "inconclusive"
    ]
    assert [call for moves in aliases for call in moves.calls] == [("drop_challenger", "2")]
    assert len(verdicts) == 1, published
    done = await first_store.get(model, overdue.experiment_id)
    assert done is not None
    assert (done.status, done.actions_pending) == ("inconclusive", False)
