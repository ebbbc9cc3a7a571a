"""Fakes and factories for tests of handlers (in-memory broker level, never integration)."""

from __future__ import annotations

from collections.abc import Sequence

from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.events import Event
from shared.messaging import ConsumerContext
from shared.metrics import MessagingMetrics


class InMemoryProcessedEvents:
    """An idempotency store in a set."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was marked."""
        return event_id in self.ids

    async def mark(self, event_id: str) -> None:
        """Mark ``event_id``."""
        self.ids.add(event_id)


class RecordingPublisher:
    """A publisher that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> None:
        """Record ``event``."""
        self.events.append(event)

    async def publish_batch(self, events: Sequence[Event]) -> None:
        """Record ``events``."""
        self.events.extend(events)

    def of_type(self, event_type: type[Event]) -> list[Event]:
        """The recorded events of one type."""
        return [e for e in self.events if isinstance(e, event_type)]


def consumer_context(service: str, broker: KafkaBroker | None = None) -> ConsumerContext:
    """A consumer context with an in-memory idempotency store and fresh metrics, no retry waits."""
    return ConsumerContext(
        service=service,
        broker=broker or KafkaBroker(),
        processed=InMemoryProcessedEvents(),
        metrics=MessagingMetrics.create(CollectorRegistry()),
        max_attempts=3,
        retry_backoff_s=0.0,
        outage_backoff_s=0.0,
    )


def without_lifespan(app: ASGIApp) -> ASGIApp:
    """``app`` as a server without lifespan support sees it: its start-up hooks never run, so
    nothing connects to Kafka, and the state a test wired by hand is the state served.

    For in-process clients that would otherwise start the lifespan (schemathesis's).
    """

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Refusing the scope before reading a message is how an app says "no lifespan".
            raise RuntimeError("lifespan not run: the test wires the app itself")
        await app(scope, receive, send)

    return serve
