"""Many models, one router: each model's experiment has its own routing table and verdict,
and one model's stuck or failing look never holds up another's."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest
from test_router_handlers import (
    MODEL,
    PLAN,
    InMemoryExperimentStore,
    Router,
    approval,
    outcome_pair,
)

from services.router.core import Experiment, experiment_id_for
from services.router.handlers import OutcomeHandler, OverrideHandler
from shared.events import ExperimentUpdated, ModelPromoted, ModelRolledBack, Variant

OTHER = "card-fraud"


class ModelAliases:
    """Alias moves recorded with their model."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def promote(self, model_name: str, version: str, previous: str) -> None:
        self.calls.append((model_name, "promote", version))

    def drop_challenger(self, model_name: str, version: str) -> None:
        self.calls.append((model_name, "drop_challenger", version))


class TroubledStore(InMemoryExperimentStore):
    """Reads of a ``stuck`` model's experiments hang until released; a ``failing`` one's raise."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck: set[str] = set()
        self.failing: set[str] = set()
        self.release, self.entered = asyncio.Event(), asyncio.Event()
        self.hanging = 0

    async def get(self, model_name: str, experiment_id: str) -> Experiment | None:
        if model_name in self.failing:
            raise ConnectionError(f"{model_name}'s state unreadable")
        if model_name in self.stuck:
            self.hanging += 1
            self.entered.set()
            await self.release.wait()
        return await super().get(model_name, experiment_id)


class ModelsRouter(Router):
    """The router's handlers on fakes, looks waiting 50 ms at most, with overrides."""

    def __init__(self) -> None:
        self.troubled = TroubledStore()
        super().__init__(store=self.troubled)
        self.model_aliases = ModelAliases()
        self.outcomes = OutcomeHandler(
            self.store,
            self.tally,
            self.model_aliases,
            self.publisher,
            self.metrics,
            lambda: self.now,
            look_wait_s=0.05,
        )
        self.overrides = OverrideHandler(
            self.store, self.publisher, self.metrics, self.outcomes.locks
        )

    def updates_of(self, model: str) -> list[ExperimentUpdated]:
        return [u for u in self.updates() if u.model_name == model]


async def open_for(router: Router, model: str) -> str:
    """Approve challenger 2 against champion 1 of ``model``; the experiment it opens."""
    cause = approval("challenger", "2").model_copy(update={"model_name": model})
    await router.approvals(cause)
    return experiment_id_for(cause)


async def send_outcomes(
    router: Router, model: str, experiment_id: str, acc: dict[Variant, float], rng: random.Random
) -> None:
    """Twenty routed predictions of ``model`` and their labels, by its current split."""
    state = await router.store.get(model, experiment_id)
    assert state is not None
    for _ in range(20):
        variant: Variant = "challenger" if rng.random() < state.challenger_share else "champion"
        correct = rng.random() < acc[variant]
        prediction, feedback = outcome_pair(experiment_id, variant, state.challenger_share, correct)
        await router.outcomes.on_prediction(prediction.model_copy(update={"model_name": model}))
        await router.outcomes.on_feedback(feedback.model_copy(update={"model_name": model}))


async def drive_until_verdict(
    router: Router, model: str, experiment_id: str, acc: dict[Variant, float]
) -> Experiment:
    rng = random.Random(5)
    for _ in range(300):
        state = await router.store.get(model, experiment_id)
        assert state is not None
        if not state.is_running:
            return state
        await send_outcomes(router, model, experiment_id, acc, rng)
    raise AssertionError(f"{model}'s experiment reached no verdict")


BETTER: dict[Variant, float] = {"champion": 0.70, "challenger": 0.90}
WORSE: dict[Variant, float] = {"champion": 0.90, "challenger": 0.60}


async def test_two_models_experiments_run_at_once_with_their_own_tables_and_verdicts() -> None:
    router = ModelsRouter()
    first, second = await open_for(router, MODEL), await open_for(router, OTHER)
    # Positive control: both run at once, each in its own routing table.
    assert {m: t.status for m, t in router.store.tables.items()} == {
        MODEL: "running",
        OTHER: "running",
    }
    assert router.store.tables[MODEL].experiment_id == first
    assert router.store.tables[OTHER].experiment_id == second
    rng = {MODEL: random.Random(1), OTHER: random.Random(2)}
    states: dict[str, Experiment | None] = {MODEL: None, OTHER: None}
    for _ in range(300):  # interleaved: one batch of each model in turn
        for model, exp, acc in ((MODEL, first, BETTER), (OTHER, second, WORSE)):
            state = await router.store.get(model, exp)
            assert state is not None
            states[model] = state
            if state.is_running:
                await send_outcomes(router, model, exp, acc, rng[model])
        if not any(s is not None and s.is_running for s in states.values()):
            break
    done, rolled = states[MODEL], states[OTHER]
    assert done is not None
    assert rolled is not None
    assert (done.status, rolled.status) == ("promoted", "rolled_back")
    assert (router.store.tables[MODEL].status, router.store.tables[OTHER].status) == (
        "promoted",
        "rolled_back",
    )
    assert sorted(router.model_aliases.calls) == [
        (OTHER, "drop_challenger", "2"),
        (MODEL, "promote", "2"),
    ]
    verdicts = router.publisher.of_type(ModelPromoted) + router.publisher.of_type(ModelRolledBack)
    named = [
        (v.type_name(), v.model_name)
        for v in verdicts
        if isinstance(v, ModelPromoted | ModelRolledBack)
    ]
    assert named == [("model-promoted", MODEL), ("model-rolled-back", OTHER)]
    assert {u.experiment_id for u in router.updates_of(MODEL)} == {first}
    assert {u.experiment_id for u in router.updates_of(OTHER)} == {second}
    for model in (MODEL, OTHER):
        assert (
            router.registry.get_sample_value("experiments_opened_total", {"model_name": model}) == 1
        )


async def test_a_stuck_models_look_never_holds_up_another_models_verdict() -> None:
    router = ModelsRouter()
    stuck, free = await open_for(router, MODEL), await open_for(router, OTHER)
    router.troubled.stuck.add(MODEL)
    # The stuck model's feedback is handled (its label kept) though its look hangs.
    _, feedback = outcome_pair(stuck, "champion", 0.1, True)
    await asyncio.wait_for(router.outcomes.on_feedback(feedback), 5)
    assert router.troubled.hanging == 1  # positive control: its look did hang, lock held
    final = await asyncio.wait_for(drive_until_verdict(router, OTHER, free, BETTER), 60)
    assert final.status == "promoted"
    # Its periodic look leaves the stuck model's hanging look be and finishes the other's.
    await asyncio.wait_for(router.outcomes.tick(), 5)
    assert router.troubled.hanging == 1
    router.troubled.stuck.clear()
    router.troubled.release.set()
    await router.outcomes.close()
    state = await router.store.get(MODEL, stuck)
    assert state is not None
    assert state.is_running


async def test_an_override_applies_while_another_models_look_hangs() -> None:
    router = ModelsRouter()
    stuck, free = await open_for(router, MODEL), await open_for(router, OTHER)
    router.troubled.stuck.add(MODEL)
    look = asyncio.create_task(router.outcomes.look_at(MODEL, stuck))
    await asyncio.wait_for(router.troubled.entered.wait(), 5)
    manual = ModelRolledBack(
        producer="registry",
        version="1",
        rolled_back_version="2",
        reason="complaints",
        requested_by="ana",
        model_name=MODEL,
    )
    # Positive control: the stuck model's own override waits for its look (one lock each).
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(router.overrides.on_rolled_back(manual), 0.2)
    await asyncio.wait_for(
        router.overrides.on_rolled_back(manual.model_copy(update={"model_name": OTHER})), 1
    )
    overridden = await router.store.get(OTHER, free)
    assert overridden is not None
    assert overridden.status == "overridden"
    assert router.store.tables[OTHER].status == "overridden"
    assert router.store.tables[MODEL].status == "running"
    router.troubled.release.set()
    await look


async def test_a_failing_models_look_never_stops_another_models_tick() -> None:
    router = ModelsRouter()
    failing, healthy = await open_for(router, MODEL), await open_for(router, OTHER)
    router.troubled.failing.add(MODEL)
    router.now += timedelta(seconds=PLAN.max_duration_s + 1)
    await router.outcomes.tick()
    ended = await router.store.get(OTHER, healthy)
    assert ended is not None
    assert (ended.status, ended.reasons[0]) == ("inconclusive", "max_duration")
    failures = router.registry.get_sample_value(
        "experiment_look_failures_total", {"model_name": MODEL}
    )
    assert failures == 1
    assert (
        router.registry.get_sample_value("experiment_look_failures_total", {"model_name": OTHER})
        is None
    )
    router.troubled.failing.clear()
    still = await router.store.get(MODEL, failing)
    assert still is not None
    assert still.is_running  # its turn comes with the next tick, once it reads again
    await router.outcomes.tick()
    retried = await router.store.get(MODEL, failing)
    assert retried is not None
    assert retried.status == "inconclusive"
