"""The gateway follows routing tables and aliases; its event buffer stays bounded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from _gateway_fakes import (
    FRAUD,
    FRAUD_SPEC,
    SPEC,
    FakeModelRegistry,
    FakeRoutingState,
    InMemoryPredictionRecords,
    registered,
)
from aiokafka.errors import MessageSizeTooLargeError
from faststream.kafka import KafkaBroker, TestKafkaBroker
from prometheus_client import CollectorRegistry

from services.gateway.fleet import ModelFleet
from services.gateway.handlers import ServingHandlers, register
from services.gateway.metrics import GatewayMetrics
from services.gateway.pool import ModelPool
from services.gateway.prediction_log import PredictionEventBuffer
from services.gateway.serving import ServingRefresher
from shared.catalog import InMemorySpecSource, ModelCatalog
from shared.errors import DependencyUnavailableError
from shared.events import (
    Event,
    ExperimentUpdated,
    ModelPromoted,
    ModelRegistered,
    ModelRolledBack,
    PredictionLogged,
)
from shared.testing import RecordingPublisher, consumer_context

MODEL = "customer-segment"


@dataclass
class Serving:
    registry: FakeModelRegistry = field(default_factory=FakeModelRegistry)
    routing_state: FakeRoutingState = field(default_factory=FakeRoutingState)
    specs: InMemorySpecSource = field(default_factory=InMemorySpecSource)
    max_loaded: int = 64
    collectors: CollectorRegistry = field(default_factory=CollectorRegistry)

    fleet: ModelFleet = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = GatewayMetrics.create(self.collectors)
        catalog = ModelCatalog(self.specs, MODEL, SPEC)
        self.fleet = ModelFleet(
            catalog,
            self.registry,
            self.routing_state,
            self.metrics,
            (MODEL, SPEC),
            max_loaded=self.max_loaded,
            load_timeout_s=5.0,
        )

    @property
    def pool(self) -> ModelPool:
        return self.fleet.default.pool

    @property
    def refresher(self) -> ServingRefresher:
        return self.fleet.default.refresher

    def metric(self, name: str, **labels: str) -> float:
        return float(self.collectors.get_sample_value(name, labels) or 0.0)

    async def deliver(self, *events: Event) -> None:
        broker = KafkaBroker()
        register(consumer_context("gateway", broker), ServingHandlers(self.fleet))
        async with TestKafkaBroker(broker) as test_broker:
            for event in events:
                await test_broker.publish(event.model_dump_json().encode(), event.topic.value)

    def versions(self) -> tuple[str | None, str | None]:
        snapshot = self.pool.snapshot
        return (
            snapshot.champion.version if snapshot.champion else None,
            snapshot.challenger.version if snapshot.challenger else None,
        )


def table(
    status: str = "running", champion: str = "1", challenger: str | None = "2", share: float = 0.1
) -> ExperimentUpdated:
    return ExperimentUpdated.model_validate(
        {
            "producer": "router",
            "experiment_id": f"exp-{champion}-{challenger}",
            "model_name": MODEL,
            "status": status,
            "champion_version": champion,
            "challenger_version": challenger,
            "challenger_share": share,
        }
    )


async def test_experiment_update_loads_its_versions_and_split() -> None:
    serving = Serving()
    update = table()
    await serving.deliver(update)
    assert serving.versions() == ("1", "2")
    assert serving.pool.snapshot.routing.experiment_id == update.experiment_id
    assert serving.pool.snapshot.routing.challenger_share == pytest.approx(0.1)


async def test_a_failed_load_keeps_the_previous_model_serving() -> None:
    serving = Serving()
    serving.registry.broken.add("3")
    await serving.deliver(table(challenger="2"), table(challenger="3", share=0.2))
    assert serving.versions() == ("1", "2")
    assert serving.metric("model_load_errors_total", model_name=MODEL, role="challenger") == 1


def forged(champion: str, challenger: str, share: float = 0.5) -> ExperimentUpdated:
    return table(champion=champion, challenger=challenger, share=share).model_copy(
        update={"experiment_id": "forged"}
    )


async def test_an_experiment_whose_versions_do_not_load_is_not_adopted_at_all() -> None:
    serving = Serving()
    await serving.deliver(table())
    before = serving.pool.snapshot
    serving.registry.broken.update({"98", "99"})
    await serving.deliver(forged("98", "99"))
    assert serving.pool.snapshot == before  # neither its id nor its 0.5 share
    assert serving.pool.snapshot.routing.experiment_id == "exp-1-2"


async def test_a_challenger_that_does_not_load_keeps_the_whole_previous_table() -> None:
    serving = Serving()
    await serving.deliver(table())
    before = serving.pool.snapshot
    serving.registry.broken.add("3")
    await serving.deliver(forged("1", "3"))
    assert serving.pool.snapshot == before
    assert serving.metric("model_load_errors_total", model_name=MODEL, role="challenger") == 1


async def test_a_promotion_is_not_held_up_by_a_challenger_that_does_not_load() -> None:
    serving = Serving(registry=FakeModelRegistry({"champion": "1", "challenger": None}))
    await serving.refresher.load_initial()
    serving.registry.alias_versions = {"champion": "4", "challenger": "5"}
    serving.registry.broken.add("5")
    await serving.refresher.follow_aliases(keep_split=False)
    assert serving.versions() == ("4", None)
    assert serving.pool.snapshot.routing.challenger_share == 0.0


async def test_a_cold_start_serves_the_champion_alone_when_the_challenger_does_not_load() -> None:
    serving = Serving()
    serving.registry.broken.add("2")
    await serving.deliver(table(share=0.5))
    assert serving.versions() == ("1", None)
    routing = serving.pool.snapshot.routing
    assert (routing.experiment_id, routing.challenger_share) == (None, 0.0)
    serving.registry.broken.clear()  # the next resync serves the experiment whole
    await serving.deliver(table(share=0.5))
    assert serving.versions() == ("1", "2")
    assert serving.pool.snapshot.routing.challenger_share == pytest.approx(0.5)


async def test_the_refresher_knows_when_nothing_is_named_to_serve() -> None:
    serving = Serving()
    assert serving.refresher.nothing_to_serve is False  # nothing resolved yet
    await serving.refresher.load_initial()
    assert serving.refresher.nothing_to_serve is True  # a fresh registry: no champion
    serving.registry.alias_versions = {"champion": "1", "challenger": None}
    serving.registry.broken.add("1")  # named but not loadable: still awaited
    await serving.refresher.load_initial()
    assert serving.refresher.nothing_to_serve is False
    assert serving.versions() == (None, None)


async def test_a_model_that_cannot_score_an_example_row_is_never_swapped_in() -> None:
    serving = Serving()
    await serving.deliver(table(challenger=None, share=0.0, status="champion_only"))
    serving.registry.unscorable.add("2")
    await serving.deliver(table())
    assert serving.versions() == ("1", None)
    assert serving.metric("model_load_errors_total", model_name=MODEL, role="challenger") == 1


async def test_promotion_reuses_the_loaded_challenger_and_stops_the_split() -> None:
    serving = Serving()
    await serving.deliver(
        table(), table(status="promoted", champion="2", challenger="2", share=0.5)
    )
    assert serving.versions() == ("2", None)
    assert serving.pool.snapshot.routing.challenger_share == 0.0
    assert serving.registry.loads == ["1", "2"]


async def test_updates_for_another_model_are_ignored() -> None:
    serving = Serving()
    other = table().model_copy(update={"model_name": "another-model"})
    await serving.deliver(other)
    assert serving.versions() == (None, None)


async def test_promotion_event_re_resolves_aliases() -> None:
    serving = Serving()
    serving.registry.alias_versions = {"champion": "4", "challenger": None}
    promoted = ModelPromoted(producer="router", model_name=MODEL, version="4", reason="won")
    await serving.deliver(promoted)
    assert serving.versions() == ("4", None)


async def test_start_up_serves_the_routing_table_the_aliases_agree_with() -> None:
    serving = Serving(registry=FakeModelRegistry({"champion": "1", "challenger": "2"}))
    serving.routing_state.table = table(champion="1", challenger="2", share=0.3)
    await serving.refresher.load_initial()
    assert serving.versions() == ("1", "2")
    assert serving.pool.snapshot.routing.challenger_share == pytest.approx(0.3)


async def test_a_table_the_aliases_contradict_is_not_served() -> None:
    # Redis still holds the experiment; a person rolled the champion back to 7 meanwhile.
    serving = Serving(registry=FakeModelRegistry({"champion": "7", "challenger": "2"}))
    serving.routing_state.table = table(champion="1", challenger="2", share=0.3)
    await serving.refresher.load_initial()
    assert serving.versions() == ("7", "2")
    assert serving.pool.snapshot.routing.challenger_share == 0.0
    assert serving.pool.snapshot.routing.experiment_id is None
    assert serving.metric("routing_table_rejected_total", model_name=MODEL) == 1


async def test_a_resync_without_a_table_ends_the_split_it_was_serving() -> None:
    serving = Serving(registry=FakeModelRegistry({"champion": "1", "challenger": "2"}))
    serving.routing_state.table = table(champion="1", challenger="2", share=0.3)
    await serving.refresher.load_initial()
    assert serving.pool.snapshot.routing.challenger_share == pytest.approx(0.3)
    serving.routing_state.table = None  # Redis came back empty
    await serving.refresher.load_initial()
    assert serving.pool.snapshot.routing.challenger_share == 0.0


async def test_a_manual_rollback_ends_the_split_without_waiting_for_the_router() -> None:
    serving = Serving(registry=FakeModelRegistry({"champion": "1", "challenger": "2"}))
    await serving.deliver(table(champion="1", challenger="2", share=0.3))
    serving.registry.alias_versions = {"champion": "0", "challenger": "2"}
    rolled = ModelRolledBack(
        producer="registry",
        model_name=MODEL,
        version="0",
        rolled_back_version="1",
        reason="complaints",
        requested_by="ana",
    )
    await serving.deliver(rolled)
    assert serving.versions() == ("0", "2")
    assert serving.pool.snapshot.routing.challenger_share == 0.0


async def test_tables_older_than_the_one_serving_are_skipped() -> None:
    serving = Serving(registry=FakeModelRegistry({"champion": "1", "challenger": "3"}))
    old = table(champion="1", challenger="2")
    serving.routing_state.table = table(champion="1", challenger="3", share=0.2)
    await serving.refresher.load_initial()
    await serving.deliver(old)  # a replay from the start of the topic
    assert serving.versions() == ("1", "3")
    assert serving.registry.loads == ["1", "3"]


async def test_start_up_without_a_table_serves_aliases_and_gives_the_challenger_nothing() -> None:
    serving = Serving(registry=FakeModelRegistry({"champion": "1", "challenger": "2"}))
    await serving.refresher.load_initial()
    assert serving.versions() == ("1", "2")
    assert serving.pool.snapshot.routing.challenger_share == 0.0


async def test_start_up_with_nothing_registered_serves_nothing() -> None:
    serving = Serving()
    await serving.refresher.load_initial()
    assert serving.versions() == (None, None)


class UnreadableRoutingState(FakeRoutingState):
    """Routing tables in a Redis that can go away."""

    down = False

    async def latest(self, model_name: str) -> ExperimentUpdated | None:
        if self.down:
            raise DependencyUnavailableError("routing state unreadable: ConnectionError()")
        return await super().latest(model_name)


async def test_a_resync_while_redis_is_away_keeps_the_split_it_serves() -> None:
    routing = UnreadableRoutingState(table(champion="1", challenger="2", share=0.3))
    serving = Serving(FakeModelRegistry({"champion": "1", "challenger": "2"}), routing)
    await serving.refresher.load_initial()
    assert serving.pool.snapshot.routing.challenger_share == pytest.approx(0.3)
    routing.down = True
    await serving.refresher.load_initial()
    assert serving.versions() == ("1", "2")
    assert serving.pool.snapshot.routing.challenger_share == pytest.approx(0.3)


async def test_a_cold_start_while_redis_is_away_serves_the_aliases_without_a_split() -> None:
    routing = UnreadableRoutingState(table(champion="1", challenger="2", share=0.3))
    routing.down = True
    serving = Serving(FakeModelRegistry({"champion": "1", "challenger": "2"}), routing)
    await serving.refresher.load_initial()
    assert serving.versions() == ("1", "2")
    assert serving.pool.snapshot.routing.challenger_share == 0.0


async def test_each_model_follows_only_its_own_routing_table_and_aliases() -> None:
    serving = Serving(specs=registered(FRAUD_SPEC))
    await serving.fleet.load_all()  # both held; the registry names no champion yet
    await serving.deliver(table().model_copy(update={"model_name": FRAUD}))
    fraud = serving.fleet.held(FRAUD)
    assert fraud is not None
    assert fraud.pool.snapshot.describe() == {
        "champion": {"name": FRAUD, "version": "1"},
        "challenger": {"name": FRAUD, "version": "2"},
    }
    assert serving.versions() == (None, None)  # the default model's state is untouched
    serving.registry.model_aliases[FRAUD] = {"champion": "2", "challenger": None}
    promoted = ModelPromoted(producer="router", model_name=FRAUD, version="2", reason="won")
    await serving.deliver(promoted)
    assert fraud.pool.snapshot.describe() == {"champion": {"name": FRAUD, "version": "2"}}
    assert {name for name, _ in serving.registry.loaded} == {FRAUD}


async def test_a_registered_model_is_held_and_loaded_from_its_event() -> None:
    serving = Serving()
    serving.registry.model_aliases[FRAUD] = {"champion": "3", "challenger": None}
    registered_event = ModelRegistered(
        producer="registry", model_name=FRAUD, spec_revision=1, spec=FRAUD_SPEC
    )
    await serving.deliver(registered_event)
    fraud = serving.fleet.held(FRAUD)
    assert fraud is not None
    assert fraud.loading is not None
    await fraud.loading
    assert fraud.pool.snapshot.describe() == {"champion": {"name": FRAUD, "version": "3"}}
    assert fraud.spec == FRAUD_SPEC


def logged(n: int) -> list[PredictionLogged]:
    return [
        PredictionLogged(
            producer="gateway",
            request_id=f"r-{i}",
            model_name=MODEL,
            version="1",
            variant="champion",
            features={"age": 30.0},
            predicted_class="steady",
            confidence=0.6,
            latency_ms=1.0,
        )
        for i in range(n)
    ]


async def test_full_buffer_drops_the_oldest_and_counts_them() -> None:
    publisher = RecordingPublisher()
    collectors = CollectorRegistry()
    metrics = GatewayMetrics.create(collectors)
    buffer = PredictionEventBuffer(
        publisher, InMemoryPredictionRecords(), metrics, capacity=3, batch_size=10, timeout_s=1
    )
    buffer.offer(logged(2))
    buffer.offer(logged(5)[2:])
    assert len(buffer) == 3
    assert await buffer.drain_once() == 3 + 3  # published and recorded
    assert [e.request_id for e in publisher.events if isinstance(e, PredictionLogged)] == [
        "r-2",
        "r-3",
        "r-4",
    ]
    assert (
        collectors.get_sample_value(
            "prediction_events_dropped_total", {"reason": "publish_buffer_full"}
        )
        == 2
    )


async def test_buffer_drains_in_bounded_batches() -> None:
    publisher = RecordingPublisher()
    records = InMemoryPredictionRecords()
    metrics = GatewayMetrics.create(CollectorRegistry())
    buffer = PredictionEventBuffer(
        publisher, records, metrics, capacity=100, batch_size=4, timeout_s=1
    )
    buffer.offer(logged(10))
    assert [await buffer.drain_once() for _ in range(4)] == [8, 8, 4, 0]
    assert len(records.records) == 10


class OversizePublisher(RecordingPublisher):
    """A broker that refuses one request id as over its size limit."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused = refused

    async def publish(self, event: Event) -> None:
        if isinstance(event, PredictionLogged) and event.request_id == self.refused:
            raise MessageSizeTooLargeError()
        await super().publish(event)

    async def publish_batch(self, events: Sequence[Event]) -> None:
        if any(isinstance(e, PredictionLogged) and e.request_id == self.refused for e in events):
            raise MessageSizeTooLargeError()
        await super().publish_batch(events)


async def test_an_event_over_the_size_limit_is_dropped_not_retried_forever() -> None:
    publisher = OversizePublisher("r-1")
    collectors = CollectorRegistry()
    metrics = GatewayMetrics.create(collectors)
    buffer = PredictionEventBuffer(
        publisher, InMemoryPredictionRecords(), metrics, capacity=10, batch_size=10, timeout_s=1
    )
    buffer.offer(logged(3))
    while await buffer.drain_once():
        pass
    assert [e.request_id for e in publisher.events if isinstance(e, PredictionLogged)] == [
        "r-0",
        "r-2",
    ]
    assert len(buffer) == 0
    dropped = collectors.get_sample_value(
        "prediction_events_dropped_total", {"reason": "too_large"}
    )
    assert dropped == 1
    retried = collectors.get_sample_value("prediction_events_retried_total", {"stage": "publish"})
    assert not retried
