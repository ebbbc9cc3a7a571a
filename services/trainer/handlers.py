"""Trainer handlers: DataArrived or DriftDetected → train on the recent window → ModelTrained."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from services.trainer.core import TrainingConfig, combine_batches, data_version, train
from services.trainer.metrics import TrainerMetrics
from services.trainer.ports import BatchHistory, BatchSource, ModelStore, RunContext, TrainingLock
from shared.errors import InvalidInputError, NotFoundError
from shared.events import DataArrived, DatasetRef, DriftDetected, Event, ModelTrained, Topic
from shared.messaging import ConsumerContext, EventPublisher, subscribe
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

Trigger = Literal["data", "drift"]
Loaded = dict[str, pd.DataFrame]


@dataclass(frozen=True)
class TrainerPorts:
    """Everything the trainer's handlers talk to."""

    batches: BatchSource
    history: BatchHistory
    lock: TrainingLock
    store: ModelStore
    publisher: EventPublisher


@dataclass(frozen=True)
class TrainerHandlers:
    """The trainer's event handlers, sharing one training path."""

    ports: TrainerPorts
    spec: ModelSpec
    config: TrainingConfig
    model_name: str
    window_batches: int
    metrics: TrainerMetrics

    async def on_data_arrived(self, event: DataArrived) -> None:
        """Check and remember the new batch, then train on the recent window including it."""
        fresh = await asyncio.to_thread(self.ports.batches.load, event.dataset)
        async with self.ports.lock.hold(self.model_name):
            await self.ports.history.record(self.model_name, event.dataset)
            trained = await self._train(event, "data", {event.dataset.sha256: fresh})
        await self.ports.publisher.publish(trained)

    async def on_drift_detected(self, event: DriftDetected) -> None:
        """Retrain at once on the recent window, in the drift's turn of the loop."""
        if event.model_name != self.model_name:
            log.warning("drift of another model ignored", extra={"model": event.model_name})
            return
        async with self.ports.lock.hold(self.model_name):
            trained = await self._train(event, "drift", {})
        await self.ports.publisher.publish(trained)

    async def _train(self, cause: Event, trigger: Trigger, loaded: Loaded) -> ModelTrained:
        refs = await self.ports.history.recent(self.model_name, self.window_batches)
        if not refs:
            raise NotFoundError(f"no batches recorded for {self.model_name}; nothing to train on")
        started = time.perf_counter()
        try:
            trained = await asyncio.to_thread(self._fit_and_log, cause, trigger, refs, loaded)
        except Exception:
            self.metrics.trainings.labels(trigger, "failed").inc()
            raise
        elapsed = time.perf_counter() - started
        self.metrics.trainings.labels(trigger, "succeeded").inc()
        self.metrics.training_seconds.labels(trigger).observe(elapsed)
        log.info("model trained", extra={"run_id": trained.run_id, "seconds": round(elapsed, 2)})
        return trained

    def _fit_and_log(
        self, cause: Event, trigger: Trigger, refs: list[DatasetRef], loaded: Loaded
    ) -> ModelTrained:
        """Blocking: load the window, fit, log to the model store, describe the result."""
        batches = self._load_window(refs, loaded)
        used = tuple(ref for ref, _ in batches)
        model = train(combine_batches([frame for _, frame in batches]), self.spec, self.config)
        version = data_version(ref.sha256 for ref in used)
        context = RunContext(
            self.model_name, version, trigger, cause.event_id, cause.correlation_id, used
        )
        run_id = self.ports.store.log_training(model, context)
        return ModelTrained.caused_by(
            cause,
            producer="trainer",
            model_name=self.model_name,
            run_id=run_id,
            model_uri=f"runs:/{run_id}/model",
            algorithm=model.algorithm,
            metrics=model.metrics,
            data_version=version,
            datasets=used,
            trigger=trigger,
        )

    def _load_window(
        self, refs: list[DatasetRef], loaded: Loaded
    ) -> list[tuple[DatasetRef, pd.DataFrame]]:
        """The window's batches; an older batch that went missing is skipped, not fatal."""
        batches = []
        for ref in refs:
            if ref.sha256 in loaded:
                batches.append((ref, loaded[ref.sha256]))
                continue
            try:
                batches.append((ref, self.ports.batches.load(ref)))
            except (NotFoundError, InvalidInputError) as error:
                log.warning("batch skipped", extra={"uri": ref.uri, "error": str(error)})
        if not batches:
            raise NotFoundError(f"none of the {len(refs)} recent batches can be read")
        return batches


def register(consumer: ConsumerContext, handlers: TrainerHandlers) -> None:
    """Subscribe the trainer's handlers (consumer group flywheel-trainer)."""
    subscribe(consumer, Topic.DATA_ARRIVED, DataArrived, handlers.on_data_arrived)
    subscribe(consumer, Topic.DRIFT_DETECTED, DriftDetected, handlers.on_drift_detected)
