"""Prediction events leave the request path: a bounded buffer drained by a background task.

A prediction never waits for Kafka or Redis. When they are slow or down the
buffer fills and drops its oldest events (counted), which keeps memory bounded
and favours recent traffic, the part drift detection cares about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence

from services.gateway.metrics import GatewayMetrics
from services.gateway.ports import PredictionRecords
from shared.events import PredictionLogged
from shared.messaging import EventPublisher

log = logging.getLogger(__name__)


class PredictionEventBuffer:
    """Holds PredictionLogged events until a drain step publishes and records them."""

    def __init__(
        self,
        publisher: EventPublisher,
        records: PredictionRecords,
        metrics: GatewayMetrics,
        *,
        capacity: int,
        batch_size: int,
        timeout_s: float,
    ) -> None:
        self._publisher = publisher
        self._records = records
        self._metrics = metrics
        self._pending: deque[PredictionLogged] = deque()
        self._capacity = capacity
        self._batch_size = batch_size
        self._timeout_s = timeout_s
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def find(self, request_id: str) -> PredictionLogged | None:
        """A queued event of ``request_id`` (its record is not stored yet), if any."""
        for event in reversed(self._pending):
            if event.request_id == request_id:
                return event
        return None

    def offer(self, events: Sequence[PredictionLogged]) -> None:
        """Queue ``events`` without waiting; drop the oldest beyond capacity."""
        overflow = len(self._pending) + len(events) - self._capacity
        for _ in range(max(0, min(overflow, len(self._pending)))):
            self._pending.popleft()
        self._pending.extend(events[-self._capacity :])
        if overflow > 0:
            self._metrics.events_dropped.labels(reason="buffer_full").inc(overflow)
        self._ready.set()

    async def drain_once(self) -> int:
        """Publish and record up to one batch of events; return how many were taken."""
        batch = [self._pending.popleft() for _ in range(min(self._batch_size, len(self._pending)))]
        if not self._pending:
            self._ready.clear()
        if batch:
            await asyncio.gather(self._publish(batch), self._remember(batch))
        return len(batch)

    async def run(self) -> None:
        """Drain forever, waking when events arrive."""
        while True:
            await self._ready.wait()
            await self.drain_once()

    async def start(self) -> None:
        """Start draining in the background (a start-up hook)."""
        self._task = asyncio.create_task(self.run(), name="prediction-events")

    async def stop(self) -> None:
        """Drain what is left (bounded by the timeout), then stop (a shutdown hook)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                while await self.drain_once():
                    pass
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _publish(self, batch: list[PredictionLogged]) -> None:
        sends = [self._publisher.publish(event) for event in batch]
        try:
            async with asyncio.timeout(self._timeout_s):
                results = await asyncio.gather(*sends, return_exceptions=True)
        except TimeoutError:
            results = [TimeoutError()] * len(batch)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            self._metrics.events_dropped.labels(reason="publish_failed").inc(len(failed))
            log.warning(
                "prediction events not published",
                extra={"count": len(failed), "error": repr(failed[0])},
            )

    async def _remember(self, batch: list[PredictionLogged]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._records.remember(batch)
        except Exception as error:
            # Feedback for these predictions will answer 404; serving goes on regardless.
            log.warning(
                "prediction records not stored",
                extra={"count": len(batch), "error": repr(error)},
            )
