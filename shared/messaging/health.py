"""What one service's subscriptions share: the context, and whether they can do their job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import ConsumerRebalanceListener, TopicPartition
from faststream.kafka import KafkaBroker

from shared.events import consumer_group
from shared.messaging.idempotency import IdempotencyStore
from shared.metrics import MessagingMetrics

log = logging.getLogger(__name__)

#: Dead letters in a row on one subscription after which the service reports not ready.
DEAD_LETTER_STREAK = 20
#: Each subscription is a consumer of the service's group, so a start-up is one
#: rebalance per subscription, and each completes only when every member has
#: heartbeated into it: aiokafka's 3 s default made a router's last subscription
#: wait ~15 s. Well under a third of the 10 s session timeout, as Kafka requires.
HEARTBEAT_INTERVAL_MS = 500


class SubscriptionHealth:
    """Which subscriptions cannot do their job yet, and why.

    A handler that fails on every event (a corrupt saved state, a missing
    dependency it does not know is one) empties its topic into the DLQ while lag
    stays at zero: only readiness can tell. ``DEAD_LETTER_STREAK`` dead letters
    in a row make a subscription failing; one handled event makes it well again.
    A subscription whose consumer has not yet joined its group (been assigned
    its partitions, possibly none) reads nothing: the service is not ready until
    every one has, or an operator action sent at start-up would wait unseen.
    """

    def __init__(self, streak: int = DEAD_LETTER_STREAK) -> None:
        self._streak = streak
        self._failing: dict[str, tuple[int, str]] = {}
        self._unassigned: set[str] = set()
        self._on_all_assigned: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def listener(self, topic: str) -> ConsumerRebalanceListener:
        """The rebalance listener of ``topic``'s consumer: ready once its group assigned it."""
        self._unassigned.add(topic)
        return _FirstAssignment(lambda: self._joined(topic))

    def when_all_assigned(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` (in a task of its own) once every subscription first joined.

        A consumer whose group starts at the log's end misses what was published
        between the service reading its state and the join: re-reading the state
        then closes that gap.
        """
        self._on_all_assigned.append(callback)

    def assigned(self, topic: str) -> None:
        """``topic``'s consumer joined its group: it reads whatever it was assigned."""
        self._unassigned.discard(topic)

    async def _joined(self, topic: str) -> None:
        """The rebalance listener's side of ``assigned``: the last first join runs callbacks."""
        last = self._unassigned == {topic}
        self.assigned(topic)
        for callback in self._on_all_assigned if last else ():
            task = asyncio.create_task(_logged(callback))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def waiting(self) -> frozenset[str]:
        """The topics whose consumer has not joined its group yet."""
        return frozenset(self._unassigned)

    def handled(self, topic: str) -> None:
        """An event of ``topic`` was handled: its subscription works."""
        self._failing.pop(topic, None)

    def dead_lettered(self, topic: str, reason: str) -> None:
        """An event of ``topic`` went to the DLQ for ``reason``."""
        count, _ = self._failing.get(topic, (0, ""))
        self._failing[topic] = (count + 1, reason)

    def problems(self) -> list[str]:
        """One line per subscription not yet assigned or dead-lettering its last events."""
        waiting = [f"waiting for the consumer group to assign {t}" for t in sorted(self.waiting)]
        return waiting + [
            f"dead-lettering every event on {topic}: {reason}"
            for topic, (count, reason) in sorted(self._failing.items())
            if count >= self._streak
        ]


async def _logged(callback: Callable[[], Awaitable[None]]) -> None:
    try:
        await callback()
    except Exception:  # a failed re-read is healed by the next periodic one
        log.exception("re-reading state after the consumer groups joined failed")


class _FirstAssignment(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Calls ``on_assigned`` after each assignment (later ones change nothing)."""

    def __init__(self, on_assigned: Callable[[], Awaitable[None]]) -> None:
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._on_assigned()


@dataclass(frozen=True)
class ConsumerContext:
    """What every subscription of one service needs."""

    service: str
    broker: KafkaBroker
    processed: IdempotencyStore
    metrics: MessagingMetrics
    max_attempts: int = 3
    retry_backoff_s: float = 0.5
    outage_backoff_s: float = 1.0
    instance: str | None = None
    #: Shared by the copies ``replace`` makes, so one service has one view of its subscriptions.
    health: SubscriptionHealth = field(default_factory=SubscriptionHealth)

    @property
    def group_id(self) -> str:
        """One consumer group per service (per replica for broadcast subscriptions)."""
        base = consumer_group(self.service)
        return f"{base}-{self.instance}" if self.instance else base
