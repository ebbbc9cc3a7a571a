"""The router's batch step on a real Redis: a model's share of a poll applied in one script,
once per Kafka offset, in one Redis Cluster slot, counting what the per-event scripts count.
Run on the single Redis and on a three-node Redis Cluster."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import pytest
from redis.crc import key_slot

from services.router.adapters import RedisOutcomeTally
from services.router.core.batch import (
    Applied,
    Change,
    ModelBatch,
    Source,
    by_model,
    feedback_changes,
    prediction_changes,
)
from services.router.core.outcomes import OutcomeWindow, close_increments
from services.router.core.tally import (
    assignment_increments,
    label_of,
    pending_of,
    request_increments,
    stratum_of,
    unit_of,
)
from shared.errors import InvalidInputError
from shared.events import FeedbackReceived, PredictionLogged, Variant
from shared.redis_client import RedisClient, redis_client

pytestmark = pytest.mark.integration

LOGGED = "prediction-logged:3"
FEEDBACK = "feedback-received:3"
E = TypeVar("E", PredictionLogged, FeedbackReceived)


@pytest.fixture
async def redis(stateful_redis_url: str) -> AsyncIterator[RedisClient]:
    client = redis_client(stateful_redis_url)
    yield client
    await client.aclose()


def _prediction(model: str, i: int, variant: Variant = "champion") -> PredictionLogged:
    return PredictionLogged(
        producer="gateway",
        request_id=f"r{i}",
        correlation_id=f"c{i}",
        model_name=model,
        version="2" if variant == "challenger" else "1",
        variant=variant,
        features={},
        predicted_class="steady",
        latency_ms=2.0 + i,
        experiment_id="exp-1",
        challenger_share=0.25,
        occurred_at=f"2026-01-01T00:00:{i:02d}Z",
    )


def _feedback(prediction: PredictionLogged, correct: bool, second: int) -> FeedbackReceived:
    return FeedbackReceived(
        producer="gateway",
        request_id=prediction.request_id,
        model_name=prediction.model_name,
        version=prediction.version,
        variant=prediction.variant,
        predicted_class="steady",
        true_label="steady" if correct else "churn_risk",
        correct=correct,
        experiment_id="exp-1",
        challenger_share=0.25,
        occurred_at=f"2026-01-01T00:01:{second:02d}Z",
    )


def _batch(
    events: Sequence[E], partition: str | None, first: int, changes: Callable[[E], Sequence[Change]]
) -> ModelBatch:
    sources = [
        None if partition is None else Source(partition, first + i) for i in range(len(events))
    ]
    (batch,) = by_model(list(zip(events, sources, strict=True)), changes)
    return batch


async def _stats(tally: RedisOutcomeTally, model: str) -> tuple[Any, ...]:
    stats = await tally.stats(model, "exp-1")
    arm = stats.champion
    return (
        arm.assigned,
        arm.requests,
        arm.closed,
        arm.labelled,
        arm.correct,
        arm.late,
        stats.open_outcomes,
    )


async def test_a_batch_is_applied_once_per_offset_all_in_its_models_slot(
    redis: RedisClient,
) -> None:
    tally, model = RedisOutcomeTally(redis), f"model-{uuid.uuid4().hex[:8]}"
    rows = [_prediction(model, i) for i in range(6)]
    assert await tally.apply(_batch(rows[:4], LOGGED, 10, prediction_changes)) == Applied(0, {})
    # The same records again (a crash before the commit), then a poll overlapping them.
    assert await tally.apply(_batch(rows[:4], LOGGED, 10, prediction_changes)) == Applied(4, {})
    assert await tally.apply(_batch(rows[2:], LOGGED, 12, prediction_changes)) == Applied(2, {})
    assert await _stats(tally, model) == (6, 6, 0, 0, 0, 0, 6)
    applied = await redis.hgetall(f"flywheel:router:{{{model}}}:applied")
    assert applied == {LOGGED.encode(): b"15"}
    seq = await redis.get(f"flywheel:router:{{{model}}}:seq:exp-1")
    assert seq == b"6"
    keys = [key async for key in redis.scan_iter(match=f"flywheel:router:{{{model}}}:*")]
    assert len({key_slot(key) for key in keys}) == 1

    labels = [_feedback(row, correct=i % 3 != 0, second=i) for i, row in enumerate(rows)]
    labelled = await tally.apply(_batch(labels[:5], FEEDBACK, 0, feedback_changes))
    assert labelled == Applied(0, {"open": 5})
    # A client sending a label again: a new event at a new offset, the same request.
    resent = labels[0].model_copy(update={"event_id": str(uuid.uuid4())})
    assert await tally.apply(_batch([resent], FEEDBACK, 5, feedback_changes)) == Applied(
        0, {"duplicate": 1}
    )
    window = OutcomeWindow(seconds=3600, grace_seconds=0)
    closing = await tally.due(model, "exp-1", window, now=1e12)
    closed = close_increments(closing, window)
    assert await tally.close(model, "exp-1", closed.increments, closed.reward_shift) == 6
    # The sixth label comes after its window closed: counted late, once, however often read.
    late = _batch([labels[5]], FEEDBACK, 6, feedback_changes)
    assert await tally.apply(late) == Applied(0, {"late": 1})
    assert await tally.apply(late) == Applied(1, {})
    again = _batch([labels[5]], FEEDBACK, 7, feedback_changes)  # the same event, a new offset
    assert await tally.apply(again) == Applied(0, {"late": 1})
    assert await _stats(tally, model) == (6, 6, 6, 5, 3, 1, 0)


async def test_the_batch_step_counts_what_the_per_event_scripts_count(redis: RedisClient) -> None:
    tally = RedisOutcomeTally(redis)
    stepwise, batched = (f"model-{uuid.uuid4().hex[:8]}" for _ in range(2))
    variants: list[Variant] = ["champion", "challenger", "champion", "champion"]
    for model in (stepwise, batched):
        rows = [_prediction(model, i, v) for i, v in enumerate(variants)]
        # Two rows of one batch request: one request, one assigned unit.
        rows.append(rows[0].model_copy(update={"request_id": "r0-b", "event_id": "x"}))
        labels = [_feedback(row, correct=True, second=i) for i, row in enumerate(rows[:3])]
        if model == stepwise:
            for row in rows:
                exp = "exp-1"
                await tally.add(
                    model,
                    exp,
                    f"unit:{exp}:{stratum_of(row)}:{unit_of(row)}",
                    assignment_increments(row),
                )
                await tally.add(
                    model, exp, f"request:{exp}:{row.correlation_id}", request_increments(row)
                )
                await tally.open_outcome(model, exp, pending_of(row))
            for feedback in labels:
                await tally.label(model, "exp-1", feedback.request_id, label_of(feedback))
        else:
            await tally.apply(_batch(rows, LOGGED, 0, prediction_changes))
            await tally.apply(_batch(labels, None, 0, feedback_changes))
    for model in (stepwise, batched):
        assert await _stats(tally, model) == await _stats(tally, stepwise)
    for kind in ("stats", "outcome", "label"):
        one = await redis.hgetall(f"flywheel:router:{{{stepwise}}}:{kind}:exp-1")
        other = await redis.hgetall(f"flywheel:router:{{{batched}}}:{kind}:exp-1")
        assert {k: _close_to(v) for k, v in one.items()} == {
            k: _close_to(v) for k, v in other.items()
        }


def _close_to(raw: bytes | str) -> object:
    """A stored number rounded (sums added in another order differ in the last digits)."""
    try:
        return round(float(raw), 9)
    except ValueError:
        return raw


async def test_an_increment_lua_cannot_add_is_refused_before_anything_is_written(
    redis: RedisClient,
) -> None:
    tally, model = RedisOutcomeTally(redis), f"model-{uuid.uuid4().hex[:8]}"
    row = _prediction(model, 1).model_copy(update={"latency_ms": math.inf})
    with pytest.raises(InvalidInputError):
        await tally.apply(_batch([row], LOGGED, 0, prediction_changes))
    assert [key async for key in redis.scan_iter(match=f"flywheel:router:{{{model}}}:*")] == []
