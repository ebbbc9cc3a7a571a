"""The background task that turns each model's pending data arrivals into trainings when their
window closes, and retrains every known model on the schedule.

Every model takes its turn in a task of its own: one model's long, failing or
outage-deferred training never delays another model's. The models polled are
the catalog's (its list refreshed every ``refresh_s``, in the background) and
every model whose spec this process has read since, so a newly registered
model's first batch trains without waiting for the next refresh.
"""

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
    """Polls ``train_pending`` of every model every ``tick_s``; a model whose turn met an
    outage waits ``outage_backoff_s``, the others go on."""

    def __init__(
        self,
        handlers: TrainerHandlers,
        tick_s: float = 0.25,
        outage_backoff_s: float = 5.0,
        every_s: float | None = None,
        refresh_s: float = 30.0,
    ) -> None:
        self._handlers = handlers
        self._tick_s, self._outage_backoff_s = tick_s, outage_backoff_s
        self._every_s, self._refresh_s = every_s, refresh_s
        self._next_scheduled = time.monotonic() + every_s if every_s else math.inf
        self._registered: set[str] = set()
        self._next_refresh = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._turns: dict[str, asyncio.Task[None]] = {}
        self._resume_at: dict[str, float] = {}
        self._owed: set[str] = set()
        """Models whose scheduled retrain is due and not yet run (they were busy)."""
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start polling in the background."""
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="trainer-pending-scheduler")

    async def stop(self) -> None:
        """Stop polling; trainings in progress finish first."""
        self._stop.set()
        if self._task is not None:
            await self._task
        pending = [t for t in (self._refreshing, *self._turns.values()) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)

    def models(self) -> list[str]:
        """The models polled now: the catalog's last list and those read since (no I/O)."""
        return sorted(self._registered | set(self._handlers.catalog.cached()))

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._tick()
            await self._wait(self._tick_s)

    def _tick(self) -> None:
        """Start the turn of every model that is neither busy nor backing off."""
        self._refresh_in_background()
        models = self.models()
        if time.monotonic() >= self._next_scheduled and self._every_s is not None:
            self._next_scheduled = time.monotonic() + self._every_s
            self._owed.update(models)
        now = time.monotonic()
        for model in models:
            turn = self._turns.get(model)
            if (turn is not None and not turn.done()) or now < self._resume_at.get(model, 0.0):
                continue  # busy or backing off: its turn comes at a later tick
            scheduled = model in self._owed
            self._owed.discard(model)
            self._turns[model] = asyncio.create_task(
                self._turn(model, scheduled), name=f"trainer-turn-{model}"
            )

    async def _turn(self, model: str, scheduled: bool) -> None:
        """One model's poll (and its scheduled retrain when due); failures stay its own."""
        try:
            await self._handlers.train_pending(model)
            if scheduled:
                await self._scheduled(model)
        except OUTAGE_ERRORS as error:
            # The arrivals stay pending: nothing is lost, the training happens once it is back.
            log.warning("pending training deferred", extra={"model": model, "error": repr(error)})
            self._resume_at[model] = time.monotonic() + self._outage_backoff_s
        except Exception:
            log.exception("pending training failed unexpectedly", extra={"model": model})
            self._resume_at[model] = time.monotonic() + self._outage_backoff_s

    async def _scheduled(self, model: str) -> None:
        try:
            await self._handlers.on_schedule(model)
        except NotFoundError as error:  # nothing recorded yet: try at the next slot
            log.info("scheduled retrain skipped", extra={"model": model, "error": str(error)})

    def _refresh_in_background(self) -> None:
        # In a task of its own: a slow MLflow must not hold up the models already known.
        busy = self._refreshing is not None and not self._refreshing.done()
        if busy or time.monotonic() < self._next_refresh:
            return
        self._next_refresh = time.monotonic() + self._refresh_s
        self._refreshing = asyncio.create_task(self._refresh(), name="trainer-model-list")

    async def _refresh(self) -> None:
        try:
            self._registered = set(await self._handlers.catalog.names())
        except Exception as error:  # MLflow down: keep the last list, try again soon
            log.warning("model list not refreshed", extra={"error": repr(error)})
            self._next_refresh = time.monotonic() + self._outage_backoff_s

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
