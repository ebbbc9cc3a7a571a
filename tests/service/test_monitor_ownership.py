"""The monitor's state follows partition ownership: flushed on revocation, forgotten when
owned elsewhere, loaded on assignment, and a zombie's late save refused."""

from __future__ import annotations

import numpy as np
import pytest
from _monitor_fakes import (
    MODEL,
    FakeReferences,
    InMemoryStates,
    Monitor,
    make_monitor,
    prediction,
    reference_of,
)

from services.monitor.service import ModelMonitors
from shared.errors import FencedOffError
from shared.events import FeedbackReceived, PredictionLogged, Topic, topic_name
from shared.ownership import PartitionOwnership, model_partition

PARTITIONS = 12
EVERY = range(PARTITIONS)
NOT_MODELS = [p for p in EVERY if p != model_partition(MODEL, PARTITIONS)]


def _predictions(count: int, seed: int = 1) -> list[PredictionLogged]:
    rng = np.random.default_rng(seed)
    return [prediction(rng, 0.0) for _ in range(count)]


def _feedback() -> FeedbackReceived:
    return FeedbackReceived(
        producer="gateway",
        request_id="r",
        model_name=MODEL,
        version="7",
        variant="champion",
        predicted_class="steady",
        correct=True,
    )


def _replica(states: InMemoryStates) -> tuple[Monitor, PartitionOwnership, ModelMonitors]:
    ownership = PartitionOwnership(topic_name(Topic.PREDICTION_LOGGED), lambda _: PARTITIONS)
    monitor, _ = make_monitor(FakeReferences(reference_of("7")), states, ownership=ownership)
    return monitor, ownership, monitor.handlers.models


async def _assign(
    ownership: PartitionOwnership, models: ModelMonitors, partitions: range | list[int]
) -> None:
    await ownership.assigned(partitions)
    await models.loaded()


async def test_a_revoked_model_is_flushed_then_forgotten_and_loaded_again_on_assignment() -> None:
    states = InMemoryStates()
    monitor, ownership, models = _replica(states)
    await _assign(ownership, models, EVERY)
    await monitor.handlers.on_predictions(_predictions(50))
    await monitor.handlers.on_feedback(_feedback())  # counted, not saved yet
    saves = states.of().saves
    await ownership.revoked(EVERY)
    assert states.of().saves == saves + 1  # the outcome flushed before anyone else reads
    await _assign(ownership, models, NOT_MODELS)
    assert monitor.of().drift is None  # owned elsewhere: dropped
    with pytest.raises(FencedOffError):
        await monitor.handlers.on_predictions(_predictions(5, seed=2))
    assert states.of().saves == saves + 1  # a model not owned writes nothing
    loads = states.loads[MODEL]
    await ownership.revoked(NOT_MODELS)
    await _assign(ownership, models, EVERY)
    assert states.loads[MODEL] == loads + 1  # loaded on assignment, before any event
    assert monitor.filled() == 50
    drift = monitor.of().drift
    assert drift is not None
    assert len(drift.accuracy) == 1  # the flushed outcome came back


async def test_a_model_kept_across_a_rebalance_is_not_read_again_when_nobody_wrote() -> None:
    states = InMemoryStates()
    monitor, ownership, models = _replica(states)
    await _assign(ownership, models, EVERY)
    await monitor.handlers.on_predictions(_predictions(50))
    loads, epoch = states.loads[MODEL], monitor.of().epoch
    await ownership.revoked(EVERY)
    await _assign(ownership, models, EVERY)
    await monitor.handlers.on_predictions(_predictions(10, seed=2))
    assert states.loads[MODEL] == loads  # the epoch proved the memory current
    assert monitor.of().epoch == (epoch or 0) + 1
    assert monitor.filled() == 60


async def test_a_zombie_s_late_save_is_refused_and_its_successor_s_state_stands() -> None:
    states = InMemoryStates()
    zombie, zombie_ownership, zombie_models = _replica(states)
    successor, successor_ownership, successor_models = _replica(states)
    await _assign(zombie_ownership, zombie_models, EVERY)
    await zombie.handlers.on_predictions(_predictions(50))
    # The group moved the partition while the zombie was paused: it was never told.
    await _assign(successor_ownership, successor_models, EVERY)
    assert successor.filled() == 50  # the zombie's saved window, read under a newer epoch
    await successor.handlers.on_predictions(_predictions(30, seed=2))
    saved = states.of().state
    with pytest.raises(FencedOffError):
        await zombie.handlers.on_predictions(_predictions(20, seed=3))
    assert states.of().state == saved
    assert zombie.of().drift is None
    assert zombie.sample("monitor_fenced_off_total") == 1
    # Until it is assigned the partition again, it does not even try.
    with pytest.raises(FencedOffError):
        await zombie.handlers.on_feedback(_feedback())
    assert zombie.sample("monitor_fenced_off_total") == 1
    await successor.handlers.on_predictions(_predictions(10, seed=4))
    assert successor.filled() == 90


async def test_without_partition_ownership_the_epochs_still_fence_a_second_writer() -> None:
    states = InMemoryStates()
    first, _ = make_monitor(FakeReferences(reference_of("7")), states)
    second, _ = make_monitor(FakeReferences(reference_of("7")), states)
    await first.handlers.on_predictions(_predictions(50))
    await second.handlers.on_predictions(_predictions(10, seed=2))
    assert second.filled() == 60
    with pytest.raises(FencedOffError):
        await first.handlers.on_predictions(_predictions(10, seed=3))
