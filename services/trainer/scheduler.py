"""The background task that turns pending data arrivals into trainings when their window closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from services.trainer.handlers import TrainerHandlers
from shared.errors import NotFoundError
from shared.messaging import OUTAGE_ERRORS

log = logging.getLogger(__name__)


class PendingTrainingScheduler:
    """Polls ``train_pending`` every ``tick_s``; after an outage, waits ``outage_backoff_s``."""

    def __init__(
        self,
        handlers: TrainerHandlers,
        tick_s: float = 0.25,
        outage_backoff_s: float = 5.0,
        every_s: float | None = None,
    ) -> None:
        self._handlers = handlers
        self._tick_s = tick_s
        self._outage_backoff_s = outage_backoff_s
        self._every_s = every_s
        self._next_scheduled = time.monotonic() + every_s if every_s else math.inf
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start polling in the background."""
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="trainer-pending-scheduler")

    async def stop(self) -> None:
        """Stop polling; a training in progress finishes first."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._wait(await self._step())

    async def _step(self) -> float:
        """One poll; returns how long to wait before the next."""
        try:
            await self._handlers.train_pending()
            await self._maybe_scheduled()
        except OUTAGE_ERRORS as error:
            # The arrivals stay pending: nothing is lost, the training happens once it is back.
            log.warning("pending training deferred", extra={"error": repr(error)})
            return self._outage_backoff_s
        except Exception:
            log.exception("pending training failed unexpectedly")
            return self._outage_backoff_s
        return self._tick_s

    async def _maybe_scheduled(self) -> None:
        if time.monotonic() < self._next_scheduled or self._every_s is None:
            return
        self._next_scheduled = time.monotonic() + self._every_s
        try:
            await self._handlers.on_schedule()
        except NotFoundError as error:  # nothing recorded yet: try at the next slot
            log.info("scheduled retrain skipped", extra={"error": str(error)})

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
