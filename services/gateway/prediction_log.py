"""Prediction events leave the request path: bounded queues drained by a background task.

A prediction never waits for Kafka or Redis. Each event goes through two
stages, publishing (Kafka) and recording (Redis, for feedback), each with a
queue of its own. A step that fails puts its batch back at the front of its
queue and the drain backs off, so an outage delays events instead of losing
them and the backlog is sent when the dependency returns. Only a queue that
outgrows its capacity drops events, the oldest first (counted): memory stays
bounded and recent traffic, the part drift detection cares about, survives.

Publishing is at least once: a send that timed out may still reach the broker
and be sent again; consumers de-duplicate by ``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from aiokafka.errors import MessageSizeTooLargeError
from faststream.kafka.exceptions import BatchBufferOverflowException

from services.gateway.metrics import GatewayMetrics
from services.gateway.ports import PredictionRecords
from shared.events import Event, PredictionFailed, PredictionLogged
from shared.messaging import BatchEventPublisher

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


class _Stage(Generic[E]):
    """One bounded queue of events and the delivery that empties it.

    ``deliver`` sends a batch and returns the events that did not go (to be retried).
    """

    def __init__(
        self,
        name: str,
        deliver: Callable[[list[E]], Awaitable[list[E]]],
        metrics: GatewayMetrics,
        capacity: int,
    ):
        self.pending: deque[E] = deque()
        self._deliver = deliver
        self._dropped = metrics.events_dropped.labels(reason=f"{name}_buffer_full")
        self._pending_gauge = metrics.events_pending.labels(stage=name)
        self._capacity = capacity

    def add(self, events: Sequence[E]) -> None:
        self.pending.extend(events)
        self._trim()

    async def step(self, batch_size: int) -> int:
        """Deliver up to one batch; requeue what failed; return how many went."""
        batch = [self.pending.popleft() for _ in range(min(batch_size, len(self.pending)))]
        if not batch:
            return 0
        failed = batch  # so a cancelled step (shutdown) requeues its batch
        try:
            failed = await self._deliver(batch)
        finally:
            self.pending.extendleft(reversed(failed))
            self._trim()
        return len(batch) - len(failed)

    def _trim(self) -> None:
        overflow = len(self.pending) - self._capacity
        for _ in range(max(0, overflow)):
            self.pending.popleft()
        if overflow > 0:
            self._dropped.inc(overflow)
        self._pending_gauge.set(len(self.pending))


class PredictionEventBuffer:
    """Holds prediction events until they are published to Kafka (and recorded in Redis)."""

    def __init__(
        self,
        publisher: BatchEventPublisher,
        records: PredictionRecords,
        metrics: GatewayMetrics,
        *,
        capacity: int,
        batch_size: int,
        timeout_s: float,
        backoff_s: tuple[float, float] = (0.2, 5.0),
        linger_s: float = 0.0,
    ) -> None:
        self._publisher = publisher
        self._records = records
        self._metrics = metrics
        self._publishing: _Stage[Event] = _Stage("publish", self._publish, metrics, capacity)
        self._recording = _Stage("record", self._remember, metrics, capacity)
        self._batch_size = batch_size
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._linger_s = linger_s
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Events not yet published (the larger of the two queues in practice)."""
        return max(len(self._publishing.pending), len(self._recording.pending))

    def find(self, request_id: str) -> PredictionLogged | None:
        """A queued event of ``request_id`` (its record is not stored yet), if any."""
        for event in reversed(self._recording.pending):
            if event.request_id == request_id:
                return event
        return None

    def offer(self, events: Sequence[PredictionLogged]) -> None:
        """Queue ``events`` for both stages without waiting."""
        self._publishing.add(events)
        self._recording.add(events)
        self._ready.set()

    def offer_unrecorded(self, events: Sequence[PredictionFailed | PredictionLogged]) -> None:
        """Queue events for publishing only: failures and shadow answers get no feedback."""
        self._publishing.add(events)
        self._ready.set()

    async def drain_once(self) -> int:
        """One step of each stage; return how many deliveries (publishes plus records) succeeded."""
        published, recorded = await asyncio.gather(
            self._publishing.step(self._batch_size), self._recording.step(self._batch_size)
        )
        if not len(self):
            self._ready.clear()
        return published + recorded

    async def run(self) -> None:
        """Drain forever: wake when events arrive, back off while a dependency is down."""
        low, high = self._backoff_s
        delay = low
        while True:
            await self._ready.wait()
            if len(self) < self._batch_size:
                # Let a batch gather (like Kafka's linger.ms): one drain step per request
                # cost more CPU than the requests themselves left room for under load.
                await asyncio.sleep(self._linger_s)
            if await self.drain_once() or not len(self):
                delay = low
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, high)

    async def start(self) -> None:
        """Start draining in the background (a start-up hook)."""
        self._task = asyncio.create_task(self.run(), name="prediction-events")

    async def stop(self) -> None:
        """Drain what is left (bounded by the timeout), then stop (a shutdown hook)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                while len(self) and await self.drain_once():
                    pass
        if len(self):
            log.warning("prediction events lost at shutdown", extra={"count": len(self)})
            self._metrics.events_dropped.labels(reason="shutdown").inc(len(self))

    async def _publish(self, batch: list[Event]) -> list[Event]:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._publisher.publish_batch(batch)
        except (MessageSizeTooLargeError, BatchBufferOverflowException):
            return await self._publish_one_by_one(batch)
        except Exception as error:
            self._metrics.events_retried.labels(stage="publish").inc(len(batch))
            log.warning(
                "prediction events not published yet; will retry",
                extra={"count": len(batch), "error": repr(error)},
            )
            return batch
        return []

    async def _publish_one_by_one(self, batch: list[Event]) -> list[Event]:
        """Send each event alone, so only the ones over Kafka's size limit are dropped."""
        sends = [self._publisher.publish(event) for event in batch]
        try:
            async with asyncio.timeout(self._timeout_s):
                results = await asyncio.gather(*sends, return_exceptions=True)
        except TimeoutError:
            results = [TimeoutError()] * len(batch)
        outcomes = list(zip(batch, results, strict=True))
        too_large = [e for e, r in outcomes if isinstance(r, MessageSizeTooLargeError)]
        if too_large:
            # No retry can send these: keeping them would retry them forever.
            self._metrics.events_dropped.labels(reason="too_large").inc(len(too_large))
            log.error("prediction events over Kafka's size limit", extra={"count": len(too_large)})
        failed = [
            e
            for e, r in outcomes
            if isinstance(r, BaseException) and not isinstance(r, MessageSizeTooLargeError)
        ]
        if failed:
            self._metrics.events_retried.labels(stage="publish").inc(len(failed))
        return failed

    async def _remember(self, batch: list[PredictionLogged]) -> list[PredictionLogged]:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._records.remember(batch)
        except Exception as error:
            # Until stored, feedback finds these through ``find``; serving goes on regardless.
            self._metrics.events_retried.labels(stage="record").inc(len(batch))
            log.warning(
                "prediction records not stored yet; will retry",
                extra={"count": len(batch), "error": repr(error)},
            )
            return batch
        return []
