"""The background worker: it turns each model's pending triggers into trainings (data once
its window closes, drift and manual requests at once), off the consumer's poll loop, and
retrains every known model on the schedule.

Every model takes its turn in a task of its own: one model's long, failing or
outage-deferred training never delays another model's. Across replicas, the
model's lease lets one train at a time; the others' turns find it held and pass.
The schedule's periods are numbered from the epoch (``core.schedule_period``):
every replica's timer claims the period that just began for each model, and
only the first claim adds the retrain. The models polled are
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
from collections.abc import Callable

from services.trainer.core import period_due, schedule_period
from services.trainer.handlers import TrainerHandlers
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
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._handlers = handlers
        self._tick_s, self._outage_backoff_s = tick_s, outage_backoff_s
        self._every_s, self._refresh_s = every_s, refresh_s
        self._wall_clock = wall_clock
        self._started_in = schedule_period(wall_clock(), every_s) if every_s else 0
        """The schedule's period at start: the next one is the first due."""
        self._claimed: dict[str, int] = {}
        """The last period whose retrain each model claimed (or saw claimed by another)."""
        self._registered: set[str] = set()
        self._next_refresh = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._turns: dict[str, asyncio.Task[None]] = {}
        self._resume_at: dict[str, float] = {}
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
        now = time.monotonic()
        for model in models:
            turn = self._turns.get(model)
            if (turn is not None and not turn.done()) or now < self._resume_at.get(model, 0.0):
                continue  # busy or backing off: its turn comes at a later tick
            period = self._due_period(model)
            self._turns[model] = asyncio.create_task(
                self._turn(model, period), name=f"trainer-turn-{model}"
            )

    def _due_period(self, model: str) -> int | None:
        """The period whose retrain ``model`` claims in this turn; None when none is due.

        A model busy training when its period began claims at its next free turn.
        """
        if self._every_s is None:
            return None
        last = self._claimed.get(model, self._started_in)
        return period_due(last, self._wall_clock(), self._every_s)

    async def _turn(self, model: str, period: int | None) -> None:
        """One model's turn: train what is pending, then claim its scheduled retrain when due
        (trained at its next turn); failures stay its own."""
        try:
            await self._handlers.train_pending(model)
            if period is not None:
                await self._handlers.on_schedule(model, period)
                self._claimed[model] = period
        except OUTAGE_ERRORS as error:
            # The arrivals stay pending: nothing is lost, the training happens once it is back.
            log.warning("pending training deferred", extra={"model": model, "error": repr(error)})
            self._resume_at[model] = time.monotonic() + self._outage_backoff_s
        except Exception:
            log.exception("pending training failed unexpectedly", extra={"model": model})
            self._resume_at[model] = time.monotonic() + self._outage_backoff_s

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
