"""Prometheus collectors every service shares, built on a registry passed in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class MessagingMetrics:
    """What happens to consumed and published events."""

    consumed: Counter
    dead_letters: Counter
    published: Counter
    handler_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> MessagingMetrics:
        """Register the collectors on ``registry``."""
        return cls(
            consumed=Counter(
                "flywheel_events_consumed_total",
                "Events consumed, by outcome (handled, duplicate, dead_lettered).",
                ["service", "topic", "outcome"],
                registry=registry,
            ),
            dead_letters=Counter(
                "flywheel_dead_letters_total",
                "Events parked on a dead-letter topic, by reason.",
                ["service", "topic", "reason"],
                registry=registry,
            ),
            published=Counter(
                "flywheel_events_published_total",
                "Events published.",
                ["service", "topic"],
                registry=registry,
            ),
            handler_seconds=Histogram(
                "flywheel_handler_duration_seconds",
                "Time spent handling one event, retries included.",
                ["service", "topic"],
                registry=registry,
            ),
        )
