"""Batch consumption with the same guarantees as ``shared.messaging.subscribe``.

A batch handler receives the valid, not-yet-handled events of one poll. The
offsets of the batch are committed only after it succeeded; a record that does
not validate is dead-lettered on its own, with the reason, and the rest of the
batch goes on. Idempotency costs one Redis round trip per batch, not per
event. When the handler keeps failing on a batch, the events are retried one
at a time, so only the event at fault is dead-lettered. Batch handlers must
therefore be all-or-nothing: validate before changing state.

``subscribe_positioned_batch`` hands the handler each event with its Kafka
``Position`` (topic, partition, offset): a handler that stores the offsets it
applied atomically with its state can skip what it already applied, which is
exact where a marker per event is not (see the router's outcome tallies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from shared.errors import FlywheelError
from shared.events import Event, Topic, topic_name
from shared.messaging.dead_letters import correlation_id_of, dead_letter, validation_summary
from shared.messaging.health import HEARTBEAT_INTERVAL_MS, ConsumerContext
from shared.messaging.idempotency import IdempotencyStore
from shared.messaging.start_positions import StartPosition
from shared.messaging.subscriber import OUTAGE_ERRORS, run_with_retries

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
BatchHandler = Callable[[Sequence[E]], Awaitable[None]]


@dataclass(frozen=True)
class Position:
    """Where a record sits in Kafka."""

    topic: str
    partition: int
    offset: int


PositionedBatchHandler = Callable[[Sequence[tuple[E, Position]]], Awaitable[None]]


def subscribe_batch(
    ctx: ConsumerContext,
    topic: Topic,
    event_type: type[E],
    handle: BatchHandler[E],
    *,
    max_records: int = 500,
    batch_timeout_ms: int = 200,
) -> None:
    """Register ``handle`` for batches of ``topic``: commit after success, dedup, dead letters."""

    async def events_only(batch: Sequence[tuple[E, Position]]) -> None:
        await handle([event for event, _ in batch])

    subscribe_positioned_batch(
        ctx,
        topic,
        event_type,
        events_only,
        max_records=max_records,
        batch_timeout_ms=batch_timeout_ms,
    )


def subscribe_positioned_batch(
    ctx: ConsumerContext,
    topic: Topic,
    event_type: type[E],
    handle: PositionedBatchHandler[E],
    *,
    max_records: int = 500,
    batch_timeout_ms: int = 200,
) -> None:
    """Like ``subscribe_batch``, but ``handle`` gets each event with its ``Position``."""

    async def on_batch(message: KafkaMessage) -> None:
        raws: list[bytes] = list(message.body)  # type: ignore[arg-type]  # a batch's body is a list
        records: Sequence[Any] = message.raw_message  # a batch's raw message: the poll's records
        positions = [Position(r.topic, r.partition, r.offset) for r in records]
        await _consume_batch(
            ctx, topic, event_type, handle, list(zip(raws, positions, strict=True))
        )

    on_batch.__name__ = f"{ctx.service}_{topic.name.lower()}_batch"
    start = StartPosition(topic, ctx)  # where a group that committed nothing starts
    subscriber = ctx.broker.subscriber(
        topic_name(topic),
        group_id=ctx.group_id,
        auto_offset_reset=start.reset,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        partition_assignment_strategy=ctx.assignors,
        listener=start.listener(ctx.health.listener(topic_name(topic))),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=batch_timeout_ms,
        title=f"{ctx.service}:{topic_name(topic)}",
        description=event_type.__doc__,
    )
    start.watch(subscriber)
    subscriber(on_batch)


#: One valid record: its event, its bytes (for a dead letter) and where it sits.
_Record = tuple[E, bytes, Position]


async def _consume_batch(
    ctx: ConsumerContext,
    topic: Topic,
    event_type: type[E],
    handle: PositionedBatchHandler[E],
    raws: list[tuple[bytes, Position]],
) -> None:
    events: list[_Record[E]] = []
    for raw, position in raws:
        try:
            events.append((event_type.model_validate_json(raw), raw, position))
        except ValidationError as error:
            summary = validation_summary(error)
            await dead_letter(ctx, topic, raw, "invalid", summary, correlation_id_of(raw))
    try:
        fresh = await _drop_handled(ctx, topic, events)
        if fresh:
            await _handle_batch(ctx, topic, handle, fresh)
    except OUTAGE_ERRORS as error:
        log.warning("dependency unavailable, will retry batch", extra={"error": repr(error)})
        await asyncio.sleep(ctx.outage_backoff_s)
        raise


async def _drop_handled(
    ctx: ConsumerContext, topic: Topic, events: list[_Record[E]]
) -> list[_Record[E]]:
    ids = [event.event_id for event, _, _ in events]
    seen = await seen_many(ctx.processed, ids)
    # A batch may also repeat an event (redelivery overlapping a new poll).
    fresh: dict[str, _Record[E]] = {}
    for record in events:
        if record[0].event_id not in seen:
            fresh.setdefault(record[0].event_id, record)
    duplicates = len(events) - len(fresh)
    if duplicates:
        log.info("duplicate events ignored", extra={"count": duplicates})
        ctx.metrics.consumed.labels(ctx.service, topic_name(topic), "duplicate").inc(duplicates)
    return list(fresh.values())


async def _handle_batch(
    ctx: ConsumerContext,
    topic: Topic,
    handle: PositionedBatchHandler[E],
    batch: list[_Record[E]],
) -> None:
    started = time.perf_counter()
    positioned = [(event, position) for event, _, position in batch]
    events = [event for event, _ in positioned]
    outcomes = {"handled": len(events)}
    try:
        await _retry_batch(ctx, handle, positioned)
        ctx.health.handled(topic_name(topic))
    except OUTAGE_ERRORS:
        raise
    except Exception:
        # Find the event at fault: one at a time, each with the usual retries.
        outcomes = {"handled": 0, "dead_lettered": 0}
        for event, raw, position in batch:
            outcome = await run_with_retries(ctx, topic, event, _single(handle, position), raw)
            outcomes[outcome] += 1
    ctx.metrics.handler_seconds.labels(ctx.service, topic_name(topic)).observe(
        time.perf_counter() - started
    )
    await mark_many(ctx.processed, [e.event_id for e in events])
    for outcome, count in outcomes.items():
        if count:
            ctx.metrics.consumed.labels(ctx.service, topic_name(topic), outcome).inc(count)


async def _retry_batch(
    ctx: ConsumerContext, handle: PositionedBatchHandler[E], events: list[tuple[E, Position]]
) -> None:
    for attempt in range(1, ctx.max_attempts + 1):
        try:
            await handle(events)
            return
        except OUTAGE_ERRORS:
            raise
        except Exception as error:
            log.warning(
                "batch handler failed",
                extra={"attempt": attempt, "error": repr(error), "size": len(events)},
            )
            retryable = not isinstance(error, FlywheelError) or error.retryable
            if not retryable or attempt == ctx.max_attempts:
                raise
            await asyncio.sleep(ctx.retry_backoff_s * attempt)


def _single(
    handle: PositionedBatchHandler[E], position: Position
) -> Callable[[E], Awaitable[None]]:
    async def one(event: E) -> None:
        await handle([(event, position)])

    return one


async def seen_many(store: IdempotencyStore, ids: list[str]) -> set[str]:
    """The handled ids among ``ids``, in one round trip when the store supports it."""
    many = getattr(store, "seen_many", None)
    if many is not None:
        found: set[str] = await many(ids)
        return found
    return {event_id for event_id in ids if await store.seen(event_id)}


async def mark_many(store: IdempotencyStore, ids: list[str]) -> None:
    """Mark ``ids`` handled, in one round trip when the store supports it."""
    many = getattr(store, "mark_many", None)
    if many is not None:
        await many(ids)
        return
    for event_id in ids:
        await store.mark(event_id)


class ModelsFailedError(FlywheelError):
    """Several models of one batch failed, each for a reason of its own."""


def batch_failure(failed: Mapping[str, BaseException]) -> BaseException:
    """The one error a batch handler raises for the models that failed in it.

    An outage is everyone's: raised as it is, the batch waits and is retried. Any
    other failure is its model's own; the batch subscription then retries the events
    one at a time, and only the failed models' events end up dead-lettered.
    """
    for error in failed.values():
        if not isinstance(error, Exception) or isinstance(error, OUTAGE_ERRORS):
            return error
    if len(failed) == 1:
        return next(iter(failed.values()))
    causes = "; ".join(f"{name}: {error!r}" for name, error in failed.items())
    return ModelsFailedError(f"models failed: {causes}")
