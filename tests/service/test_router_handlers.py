"""Router handlers through FastStream's in-memory broker, with an in-memory experiment store."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from faststream.kafka import KafkaBroker, TestKafkaBroker
from prometheus_client import CollectorRegistry

from services.router.core import Experiment
from services.router.handlers import ApprovalHandler, register
from services.router.metrics import RouterMetrics
from services.router.routes import experiments_router
from shared.events import ExperimentUpdated, ModelApproved, ModelMetrics, Role, Topic
from shared.testing import RecordingPublisher, consumer_context


class InMemoryExperimentStore:
    """Experiments per model and the routing table, in dicts."""

    def __init__(self) -> None:
        self.experiments: dict[str, Experiment] = {}
        self.table: ExperimentUpdated | None = None

    async def current(self, model_name: str) -> Experiment | None:
        return self.experiments.get(model_name)

    async def save(self, experiment: Experiment, update: ExperimentUpdated) -> None:
        self.experiments[experiment.model_name] = experiment
        self.table = update

    async def routing_table(self) -> ExperimentUpdated | None:
        return self.table


class Router:
    """The router's handler wired to fakes."""

    def __init__(self) -> None:
        self.broker = KafkaBroker()
        self.store = InMemoryExperimentStore()
        self.publisher = RecordingPublisher()
        self.metrics = RouterMetrics.create(CollectorRegistry())
        handler = ApprovalHandler(self.store, self.publisher, self.metrics, initial_share=0.1)
        register(consumer_context("router", self.broker), handler)

    async def deliver(self, *events: ModelApproved) -> None:
        async with TestKafkaBroker(self.broker) as test_broker:
            for event in events:
                await test_broker.publish(event.model_dump_json().encode(), Topic.MODEL_APPROVED)

    def updates(self) -> list[ExperimentUpdated]:
        return [e for e in self.publisher.events if isinstance(e, ExperimentUpdated)]


def approval(alias: Role, version: str, champion: str = "1") -> ModelApproved:
    return ModelApproved(
        producer="registry",
        model_name="customer-segment",
        version=version,
        run_id=f"run-{version}",
        alias=alias,
        champion_version=champion,
        metrics=ModelMetrics(accuracy=0.8, macro_f1=0.7, validation_rows=50),
    )


@pytest.fixture
def router() -> Router:
    return Router()


async def test_approved_champion_serves_alone(router: Router) -> None:
    await router.deliver(approval("champion", "1"))
    (update,) = router.updates()
    assert update.status == "champion_only"
    assert (update.champion_version, update.challenger_version) == ("1", None)
    assert update.challenger_share == 0.0
    assert router.store.table == update
    assert router.store.experiments["customer-segment"].status == "champion_only"


async def test_approved_challenger_opens_an_experiment_in_the_same_turn(router: Router) -> None:
    cause = approval("challenger", "2", champion="1")
    await router.deliver(approval("champion", "1"), cause)
    update = router.updates()[-1]
    assert update.status == "running"
    assert (update.champion_version, update.challenger_version) == ("1", "2")
    assert update.challenger_share == pytest.approx(0.1)
    assert update.producer == "router"
    assert update.correlation_id == cause.correlation_id
    assert update.causation_id == cause.event_id
    assert router.store.table == update
    opened = router.metrics.experiments_opened.labels(model_name="customer-segment")
    assert opened._value.get() == 1
    assert router.metrics.challenger_share.labels(model_name="customer-segment")._value.get() == (
        pytest.approx(0.1)
    )


async def test_newer_challenger_publishes_superseded_then_running(router: Router) -> None:
    await router.deliver(approval("challenger", "2"), approval("challenger", "3"))
    statuses = [(u.status, u.challenger_version) for u in router.updates()]
    assert statuses == [("running", "2"), ("superseded", "2"), ("running", "3")]
    first, superseded, _ = router.updates()
    assert superseded.experiment_id == first.experiment_id
    assert router.store.table is not None
    assert router.store.table.challenger_version == "3"


async def test_redelivered_approval_is_handled_once(router: Router) -> None:
    event = approval("challenger", "2")
    await router.deliver(event, event)
    assert len(router.updates()) == 1


async def test_current_route_returns_the_routing_table_or_404() -> None:
    store = InMemoryExperimentStore()
    app = FastAPI()
    app.include_router(experiments_router(store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        assert (await client.get("/v1/experiments/current")).status_code == 404
        handler = ApprovalHandler(
            store, RecordingPublisher(), RouterMetrics.create(CollectorRegistry()), 0.1
        )
        await handler(approval("challenger", "2"))
        body = (await client.get("/v1/experiments/current")).json()
    assert body["status"] == "running"
    assert body["challenger_version"] == "2"
    assert body["challenger_share"] == pytest.approx(0.1)
