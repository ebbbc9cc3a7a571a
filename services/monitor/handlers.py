"""Monitor handlers: each event goes to the monitor of the model it names.

prediction-logged batches → drift windows; feedback → accuracy or loss; both →
drift-detected; approvals, promotions and rollbacks → the champion's reference read again.
A batch may mix models: each model's events are counted under that model's lock, at
once, and a model that fails fails alone (its events are retried and dead-lettered by
the batch subscription; the others', already counted, are skipped as repeats).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from services.monitor.adapters import NoMarkers
from services.monitor.service import ModelMonitors, ModelUnavailableError
from shared.events import (
    FeedbackReceived,
    ModelApproved,
    ModelPromoted,
    ModelRegistered,
    ModelRolledBack,
    PredictionLogged,
    Topic,
)
from shared.messaging import OUTAGE_ERRORS, ConsumerContext, subscribe, subscribe_broadcast
from shared.messaging.batch import subscribe_batch


class MonitorHandlers:
    """Translates the monitor's events into calls on the named model's monitor."""

    def __init__(self, models: ModelMonitors) -> None:
        self.models = models

    async def on_predictions(self, events: Sequence[PredictionLogged]) -> None:
        """Count a batch of predictions into each model's window."""
        by_model: dict[str, list[PredictionLogged]] = {}
        for event in events:
            by_model.setdefault(event.model_name, []).append(event)
        results = await asyncio.gather(
            *(self.models.of(name).count(group) for name, group in by_model.items()),
            return_exceptions=True,
        )
        failed = {name: r for name, r in zip(by_model, results, strict=True) if r is not None}
        if failed:
            raise _failure(failed)

    async def on_feedback(self, event: FeedbackReceived) -> None:
        """Count a labelled outcome into its model's accuracy."""
        await self.models.of(event.model_name).judge(event)

    async def on_champion_changed(self, event: ModelPromoted | ModelRolledBack) -> None:
        """Switch the model's reference to its new champion's sample at once."""
        await self.models.of(event.model_name).switch(event.version)

    async def on_model_approved(self, event: ModelApproved) -> None:
        """Read the champion's reference again: a first champion, or a sample logged since."""
        await self.models.of(event.model_name).switch(event.champion_version)

    async def on_model_registered(self, event: ModelRegistered) -> None:
        """Take a new or changed spec: the model's next reference is read with it."""
        self.models.catalog.apply(event)


def _failure(failed: dict[str, BaseException]) -> BaseException:
    """The one error a batch raises for the models that failed in it.

    An outage is everyone's: raised as it is, the batch waits and is retried. Any
    other failure is its model's own; the batch subscription then retries the events
    one at a time, and only the failed models' events end up dead-lettered.
    """
    for error in failed.values():
        if not isinstance(error, Exception) or isinstance(error, OUTAGE_ERRORS):
            return error
    if len(failed) == 1:
        return next(iter(failed.values()))
    causes = "; ".join(f"{name}: {error}" for name, error in failed.items())
    return ModelUnavailableError(f"models failed: {causes}")


def register(
    consumer: ConsumerContext,
    handlers: MonitorHandlers,
    *,
    batch_size: int,
    batch_timeout_ms: int,
) -> None:
    """Subscribe the monitor's handlers (consumer group flywheel-monitor).

    Model registrations reach every replica (each keeps its own catalog).
    """
    # Repeats of prediction-logged are dropped by each model's window state, not by a
    # Redis marker per event.
    batches = replace(consumer, processed=NoMarkers())
    subscribe_batch(
        batches,
        Topic.PREDICTION_LOGGED,
        PredictionLogged,
        handlers.on_predictions,
        max_records=batch_size,
        batch_timeout_ms=batch_timeout_ms,
    )
    subscribe(consumer, Topic.FEEDBACK_RECEIVED, FeedbackReceived, handlers.on_feedback)
    subscribe(consumer, Topic.MODEL_PROMOTED, ModelPromoted, handlers.on_champion_changed)
    subscribe(consumer, Topic.MODEL_ROLLED_BACK, ModelRolledBack, handlers.on_champion_changed)
    subscribe(consumer, Topic.MODEL_APPROVED, ModelApproved, handlers.on_model_approved)
    subscribe_broadcast(
        consumer, Topic.MODEL_REGISTERED, ModelRegistered, handlers.on_model_registered
    )
