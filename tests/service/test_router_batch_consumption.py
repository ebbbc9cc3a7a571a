"""The router's outcome topics in batches through FastStream's in-memory broker: each model's
changes applied once, with the offsets they came from, whatever is redelivered."""

from __future__ import annotations

import random

from test_router_handlers import MODEL, Router, approval, outcome_pair

from services.router.core import experiment_id_for
from shared.events import FeedbackReceived, PredictionLogged, Topic

OTHER = "card-fraud"


async def open_for(router: Router, model: str) -> str:
    """Approve challenger 2 against champion 1 of ``model``; the experiment it opens."""
    cause = approval("challenger", "2").model_copy(update={"model_name": model})
    await router.approvals(cause)
    return experiment_id_for(cause)


def outcomes(
    model: str, experiment_id: str, n: int, seed: int = 1
) -> tuple[list[PredictionLogged], list[FeedbackReceived]]:
    """``n`` routed predictions of ``model``'s champion (each its own request) and their labels."""
    rng = random.Random(seed)
    pairs = [outcome_pair(experiment_id, "champion", 0.1, rng.random() < 0.8) for _ in range(n)]
    predictions = [p.model_copy(update={"model_name": model}) for p, _ in pairs]
    labels = [f.model_copy(update={"model_name": model}) for _, f in pairs]
    return predictions, labels


def redelivered(router: Router, model: str, topic: Topic) -> float:
    value = router.registry.get_sample_value(
        "experiment_events_redelivered_total", {"model_name": model, "topic": topic.value}
    )
    return value or 0.0


async def test_a_redelivered_batch_is_applied_once() -> None:
    router = Router()
    experiment_id = await open_for(router, MODEL)
    predictions, labels = outcomes(MODEL, experiment_id, 15)
    await router.deliver_batch(*predictions[:10])
    # Kafka redelivers from the last commit, offset 5: five events again, then five new.
    router.offsets.rewind(Topic.PREDICTION_LOGGED.value, 5)
    await router.deliver_batch(*predictions[5:15])
    await router.deliver_batch(*labels)
    router.offsets.rewind(Topic.FEEDBACK_RECEIVED.value, 0)
    await router.deliver_batch(*labels)
    stats = await router.tally.stats(MODEL, experiment_id)
    assert (stats.champion.assigned, stats.champion.requests, stats.open_outcomes) == (15, 15, 15)
    assert redelivered(router, MODEL, Topic.PREDICTION_LOGGED) == 5
    assert redelivered(router, MODEL, Topic.FEEDBACK_RECEIVED) == 15
    assert router.tally.applied == {
        (MODEL, f"{Topic.PREDICTION_LOGGED.value}:0"): 14,
        (MODEL, f"{Topic.FEEDBACK_RECEIVED.value}:0"): 14,
    }
    kept = router.registry.get_sample_value(
        "experiment_outcomes_total", {"model_name": MODEL, "counted": "yes"}
    )
    assert kept == 15  # the redelivered labels are neither kept again nor called duplicates
    assert len(router.tally.labels[(MODEL, experiment_id)]) == 15


async def test_a_batch_that_failed_for_one_model_is_retried_without_counting_the_other_twice() -> (
    None
):
    router = Router()
    mine, other = await open_for(router, MODEL), await open_for(router, OTHER)
    my_predictions, _ = outcomes(MODEL, mine, 6, seed=1)
    other_predictions, _ = outcomes(OTHER, other, 4, seed=2)
    mixed = [e for pair in zip(my_predictions[:4], other_predictions, strict=True) for e in pair]
    mixed += my_predictions[4:]
    router.tally.failures[OTHER] = 1  # the first try applies MODEL's share, then OTHER's fails
    await router.deliver_batch(*mixed)
    mine_stats = await router.tally.stats(MODEL, mine)
    other_stats = await router.tally.stats(OTHER, other)
    assert (mine_stats.champion.requests, mine_stats.open_outcomes) == (6, 6)
    assert (other_stats.champion.requests, other_stats.open_outcomes) == (4, 4)
    # The retry skipped MODEL's six by their offsets; OTHER's four were applied then.
    assert redelivered(router, MODEL, Topic.PREDICTION_LOGGED) == 6
    assert redelivered(router, OTHER, Topic.PREDICTION_LOGGED) == 0


async def test_events_of_two_models_in_one_batch_go_to_their_own_experiments() -> None:
    router = Router()
    mine, other = await open_for(router, MODEL), await open_for(router, OTHER)
    my_predictions, my_labels = outcomes(MODEL, mine, 3, seed=1)
    other_predictions, other_labels = outcomes(OTHER, other, 5, seed=2)
    await router.deliver_batch(*my_predictions, *other_predictions)
    await router.deliver_batch(*other_labels, *my_labels)
    assert (await router.tally.stats(MODEL, mine)).open_outcomes == 3
    assert (await router.tally.stats(OTHER, other)).open_outcomes == 5
    assert set(router.tally.labels) == {(MODEL, mine), (OTHER, other)}
    assert len(router.tally.labels[(MODEL, mine)]) == 3
    assert len(router.tally.labels[(OTHER, other)]) == 5
    # One experiment's counters never hold the other model's events.
    assert set(router.tally.counters) == {(MODEL, mine), (OTHER, other)}


async def test_feedback_sent_again_at_a_new_offset_is_a_duplicate_not_a_second_label() -> None:
    router = Router()
    experiment_id = await open_for(router, MODEL)
    predictions, labels = outcomes(MODEL, experiment_id, 2)
    await router.deliver_batch(*predictions)
    resent = labels[0].model_copy(update={"event_id": "resent-by-the-client"})
    await router.deliver_batch(labels[0], labels[1], resent)
    counted = {
        status: router.registry.get_sample_value(
            "experiment_outcomes_total", {"model_name": MODEL, "counted": status}
        )
        for status in ("yes", "duplicate")
    }
    assert counted == {"yes": 2, "duplicate": 1}
    assert redelivered(router, MODEL, Topic.FEEDBACK_RECEIVED) == 0
