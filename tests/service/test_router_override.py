"""Operator actions win: a manual promote or rollback ends the model's experiment."""

from __future__ import annotations

from datetime import UTC, datetime

from faststream.kafka import KafkaBroker, TestKafkaBroker
from test_router_handlers import MODEL, Router, approval, drive, open_experiment

from services.router.handlers import OverrideHandler, register
from shared.events import Event, ExperimentUpdated, ModelPromoted, ModelRolledBack
from shared.testing import consumer_context


class OverridableRouter(Router):
    """The router's handlers, the override handler included, subscribed to a test broker."""

    def __init__(self) -> None:
        super().__init__()
        self.overrides = OverrideHandler(
            self.store, self.publisher, self.metrics, self.outcomes.locks
        )
        self.broker = KafkaBroker()
        register(
            consumer_context("router", self.broker), self.approvals, self.outcomes, self.overrides
        )

    async def deliver(self, *events: Event) -> None:
        async with TestKafkaBroker(self.broker) as test_broker:
            for event in events:
                await test_broker.publish(event.model_dump_json().encode(), event.topic)


def manual_rollback(to: str = "0") -> ModelRolledBack:
    return ModelRolledBack(
        producer="registry",
        model_name=MODEL,
        version=to,
        rolled_back_version="1",
        reason="complaints from sales",
        requested_by="ana",
    )


async def test_a_manual_rollback_overrides_the_running_experiment() -> None:
    router = OverridableRouter()
    experiment_id = await open_experiment(router)
    await router.deliver(manual_rollback())
    state = await router.store.get(MODEL, experiment_id)
    assert state is not None
    assert state.status == "overridden"
    assert state.challenger_share == 0.0
    assert state.override is not None
    assert (state.override.requested_by, state.override.reason) == ("ana", "complaints from sales")
    update = router.updates()[-1]
    assert (update.status, update.champion_version, update.challenger_version) == (
        "overridden",
        "0",
        None,
    )
    assert update.challenger_share == 0.0
    assert update.requested_by == "ana"
    assert router.store.tables.get(MODEL) == update


async def test_an_overridden_experiment_takes_no_more_looks_and_moves_no_aliases() -> None:
    router = OverridableRouter()
    experiment_id = await open_experiment(router)
    await router.deliver(manual_rollback())
    final = await drive(router, experiment_id, acc_a=0.5, acc_b=0.95, max_events=400)
    assert final.status == "overridden"
    assert final.looks == 0
    assert router.aliases.calls == []


async def test_a_redelivered_override_publishes_once() -> None:
    router = OverridableRouter()
    await open_experiment(router)
    event = manual_rollback()
    await router.overrides.on_rolled_back(event)
    await router.overrides.on_rolled_back(event)
    assert [u.status for u in router.updates()] == ["running", "overridden"]


async def test_a_manual_promotion_outside_an_experiment_names_the_champion() -> None:
    router = OverridableRouter()
    await router.deliver(approval("champion", "1"))
    promoted = ModelPromoted(
        producer="registry", model_name=MODEL, version="5", reason="hotfix", requested_by="bo"
    )
    await router.deliver(promoted)
    update = router.updates()[-1]
    assert (update.status, update.champion_version, update.challenger_share) == (
        "champion_only",
        "5",
        0.0,
    )
    table = router.store.tables.get(MODEL)
    assert isinstance(table, ExperimentUpdated)
    assert table.champion_version == "5"


async def test_an_action_older_than_the_experiment_does_not_end_it() -> None:
    router = OverridableRouter()
    old = manual_rollback().model_copy(update={"occurred_at": datetime(2020, 1, 1, tzinfo=UTC)})
    experiment_id = await open_experiment(router)
    await router.deliver(old)  # a replay of the topic by a fresh consumer group
    state = await router.store.get(MODEL, experiment_id)
    assert state is not None
    assert state.status == "running"


async def test_a_model_the_router_never_saw_gets_no_state() -> None:
    router = OverridableRouter()
    await router.deliver(manual_rollback())
    assert router.updates() == []


async def test_the_routers_own_verdicts_are_not_overrides() -> None:
    router = OverridableRouter()
    experiment_id = await open_experiment(router)
    verdict = ModelPromoted(producer="router", model_name=MODEL, version="2", reason="won")
    await router.deliver(verdict)
    state = await router.store.get(MODEL, experiment_id)
    assert state is not None
    assert state.status == "running"
