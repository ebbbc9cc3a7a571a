"""Batch consumption with the same guarantees as ``shared.messaging.subscribe``.

A batch handler receives the valid, not-yet-handled events of one poll. The
offsets of the batch are committed only after it succeeded; a record that does
not validate is dead-lettered on its own, with the reason, and the rest of the
batch goes on. Idempotency costs one Redis round trip per batch, not per
event. When the handler keeps failing on a batch, the events are retried one
at a time, so only the event at fault is dead-lettered. Batch handlers must
therefore be all-or-nothing: validate before changing state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from shared.errors import FlywheelError
from shared.events import Event, Topic, topic_name
from shared.messaging.dead_letters import correlation_id_of, dead_letter, validation_summary
from shared.messaging.health import HEARTBEAT_INTERVAL_MS, ConsumerContext
from shared.messaging.idempotency import IdempotencyStore
from shared.messaging.subscriber import OUTAGE_ERRORS, run_with_retries

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
BatchHandler = Callable[[Sequence[E]], Awaitable[None]]


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

    async def on_batch(message: KafkaMessage) -> None:
        raws: list[bytes] = list(message.body)  # type: ignore[arg-type]  # a batch's body is a list
        await _consume_batch(ctx, topic, event_type, handle, raws)

    on_batch.__name__ = f"{ctx.service}_{topic.name.lower()}_batch"
    ctx.broker.subscriber(
        topic_name(topic),
        group_id=ctx.group_id,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        listener=ctx.health.listener(topic_name(topic)),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=batch_timeout_ms,
        title=f"{ctx.service}:{topic_name(topic)}",
        description=event_type.__doc__,
    )(on_batch)


async def _consume_batch(
    ctx: ConsumerContext,
    topic: Topic,
    event_type: type[E],
    handle: BatchHandler[E],
    raws: list[bytes],
) -> None:
    events: list[tuple[E, bytes]] = []
    for raw in raws:
        try:
            events.append((event_type.model_validate_json(raw), raw))
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
    ctx: ConsumerContext, topic: Topic, events: list[tuple[E, bytes]]
) -> list[tuple[E, bytes]]:
    ids = [event.event_id for event, _ in events]
    seen = await seen_many(ctx.processed, ids)
    # A batch may also repeat an event (redelivery overlapping a new poll).
    fresh: dict[str, tuple[E, bytes]] = {}
    for event, raw in events:
        if event.event_id not in seen:
            fresh.setdefault(event.event_id, (event, raw))
    duplicates = len(events) - len(fresh)
    if duplicates:
        log.info("duplicate events ignored", extra={"count": duplicates})
        ctx.metrics.consumed.labels(ctx.service, topic_name(topic), "duplicate").inc(duplicates)
    return list(fresh.values())


async def _handle_batch(
    ctx: ConsumerContext, topic: Topic, handle: BatchHandler[E], batch: list[tuple[E, bytes]]
) -> None:
    started = time.perf_counter()
    events = [event for event, _ in batch]
    outcomes = {"handled": len(events)}
    try:
        await _retry_batch(ctx, handle, events)
        ctx.health.handled(topic_name(topic))
    except OUTAGE_ERRORS:
        raise
    except Exception:
        # Find the event at fault: one at a time, each with the usual retries.
        outcomes = {"handled": 0, "dead_lettered": 0}
        for event, raw in batch:
            outcome = await run_with_retries(ctx, topic, event, _single(handle), raw)
            outcomes[outcome] += 1
    ctx.metrics.handler_seconds.labels(ctx.service, topic_name(topic)).observe(
        time.perf_counter() - started
    )
    await mark_many(ctx.processed, [e.event_id for e in events])
    for outcome, count in outcomes.items():
        if count:
            ctx.metrics.consumed.labels(ctx.service, topic_name(topic), outcome).inc(count)


async def _retry_batch(ctx: ConsumerContext, handle: BatchHandler[E], events: list[E]) -> None:
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


def _single(handle: BatchHandler[E]) -> Callable[[E], Awaitable[None]]:
    async def one(event: E) -> None:
        await handle([event])

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
