"""At-least-once consumption: commit after success, skip what was handled, retry, dead-letter."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import DependencyUnavailableError, FlywheelError
from shared.events import Event, Topic, topic_name
from shared.logging import correlation_id_var
from shared.messaging.dead_letters import correlation_id_of, dead_letter, validation_summary
from shared.messaging.health import HEARTBEAT_INTERVAL_MS, ConsumerContext
from shared.messaging.idempotency import NothingProcessed

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
Handler = Callable[[E], Awaitable[None]]

#: Errors meaning "a dependency is down", not "this event is bad".
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    DependencyUnavailableError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


def subscribe(ctx: ConsumerContext, topic: Topic, event_type: type[E], handle: Handler[E]) -> None:
    """Register ``handle`` for ``topic`` with commit-after-success, dedup and dead letters."""

    async def on_message(message: KafkaMessage) -> None:
        await _consume(ctx, topic, event_type, handle, message)

    on_message.__name__ = f"{ctx.service}_{topic.name.lower()}"
    ctx.broker.subscriber(
        topic_name(topic),
        group_id=ctx.group_id,
        # A replica's own group starts at the end: it reads current state at start-up.
        auto_offset_reset="latest" if ctx.instance else "earliest",
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        listener=ctx.health.listener(topic_name(topic)),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title=f"{ctx.service}:{topic_name(topic)}",
        description=event_type.__doc__,
    )(on_message)


def subscribe_broadcast(
    ctx: ConsumerContext, topic: Topic, event_type: type[E], handle: Handler[E]
) -> None:
    """Like ``subscribe``, but every replica of the service receives every event.

    Each replica joins a consumer group of its own, so a routing change reaches
    all gateways, not one of them. Handlers must converge by nature (apply the
    latest state), as a per-service idempotency marker would hide the event from
    the other replicas.
    """
    replica = replace(ctx, processed=NothingProcessed(), instance=uuid.uuid4().hex[:12])
    subscribe(replica, topic, event_type, handle)


async def _consume(
    ctx: ConsumerContext,
    topic: Topic,
    event_type: type[E],
    handle: Handler[E],
    message: KafkaMessage,
) -> None:
    raw: bytes = message.body
    try:
        event = event_type.model_validate_json(raw)
    except ValidationError as error:
        summary = validation_summary(error)
        await dead_letter(ctx, topic, raw, "invalid", summary, correlation_id_of(raw))
        return
    token = correlation_id_var.set(event.correlation_id)
    try:
        await _handle_once(ctx, topic, event, handle, raw)
    finally:
        correlation_id_var.reset(token)


async def _handle_once(
    ctx: ConsumerContext, topic: Topic, event: E, handle: Handler[E], raw: bytes
) -> None:
    try:
        if await ctx.processed.seen(event.event_id):
            log.info("duplicate event ignored", extra={"event_id": event.event_id})
            ctx.metrics.consumed.labels(ctx.service, topic_name(topic), "duplicate").inc()
            return
        started = time.perf_counter()
        outcome = await run_with_retries(ctx, topic, event, handle, raw)
        ctx.metrics.handler_seconds.labels(ctx.service, topic_name(topic)).observe(
            time.perf_counter() - started
        )
        await ctx.processed.mark(event.event_id)
        ctx.metrics.consumed.labels(ctx.service, topic_name(topic), outcome).inc()
    except OUTAGE_ERRORS as error:
        # Not the event's fault: rewind (NACK) and try again once the dependency is back.
        log.warning("dependency unavailable, will retry", extra={"error": repr(error)})
        await asyncio.sleep(ctx.outage_backoff_s)
        raise


async def run_with_retries(
    ctx: ConsumerContext, topic: Topic, event: E, handle: Handler[E], raw: bytes
) -> str:
    """Run the handler; return "handled" or, after the last failed attempt, "dead_lettered"."""
    for attempt in range(1, ctx.max_attempts + 1):
        try:
            await handle(event)
            ctx.health.handled(topic_name(topic))
            return "handled"
        except OUTAGE_ERRORS:
            raise
        except Exception as error:
            retryable = not isinstance(error, FlywheelError) or error.retryable
            log.warning(
                "handler failed",
                extra={"attempt": attempt, "error": repr(error), "event_id": event.event_id},
            )
            if not retryable or attempt == ctx.max_attempts:
                reason = "rejected" if not retryable else "failed"
                text = f"{type(error).__name__}: {error}"
                await dead_letter(ctx, topic, raw, reason, text, event.correlation_id)
                return "dead_lettered"
            await asyncio.sleep(ctx.retry_backoff_s * attempt)
    raise AssertionError("unreachable")  # pragma: no cover
