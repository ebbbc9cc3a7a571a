"""Dead letters: an event that cannot be handled is parked with its reason, never lost."""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError

from shared.events import Topic, dead_letter_topic, topic_name
from shared.messaging.health import ConsumerContext

log = logging.getLogger(__name__)


async def dead_letter(
    ctx: ConsumerContext,
    topic: Topic,
    raw: bytes,
    reason: str,
    error: str,
    correlation_id: str | None = None,
) -> None:
    """Park ``raw`` on the topic's dead-letter topic, with the reason in headers.

    The record keeps the event's correlation id (header and key), so the trace of
    a turn of the loop leads to its dead letter; FastStream would make up a new one.
    """
    log.error(
        "event dead-lettered", extra={"topic": topic_name(topic), "reason": reason, "error": error}
    )
    await ctx.broker.publish(
        raw,
        topic=dead_letter_topic(topic),
        key=correlation_id.encode() if correlation_id else None,
        headers={
            "x-error": error[:2000],
            "x-error-reason": reason,
            "x-original-topic": topic_name(topic),
            "x-consumer-group": ctx.group_id,
        },
        correlation_id=correlation_id,
    )
    ctx.metrics.dead_letters.labels(ctx.service, topic_name(topic), reason).inc()
    ctx.health.dead_lettered(topic_name(topic), f"{reason}: {error}"[:500])


def correlation_id_of(raw: bytes) -> str | None:
    """The correlation id in an event that did not validate, when its envelope has one."""
    try:
        found = json.loads(raw).get("correlation_id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and found else None


def validation_summary(error: ValidationError) -> str:
    """One line per bad field: where it is and what is wrong with it."""
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or '<body>'}: {item['msg']}"
        for item in error.errors(include_url=False)
    )
