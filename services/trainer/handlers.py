"""Trainer handlers: data, drift or a request to retrain → one training → ModelTrained.

Data-arrived events are only checked and remembered here; a burst of them is
coalesced into one training by ``train_pending`` (driven by ``scheduler``).
Drift and manual requests train at once. A training that fails for a reason
other than an outage is published as ModelRejected with its cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from services.trainer.coalesce import CoalescePolicy, PendingArrival, new_rows, newest
from services.trainer.core import (
    TrainingConfig,
    check_announced_rows,
    data_version,
    train,
    training_frame,
)
from services.trainer.metrics import TrainerMetrics
from services.trainer.ports import (
    BatchHistory,
    BatchSource,
    ModelStore,
    PendingTriggers,
    RunContext,
    TrainingLock,
)
from shared.errors import FlywheelError, InvalidInputError, NotFoundError
from shared.events import (
    DataArrived,
    DatasetRef,
    DriftDetected,
    Event,
    GateResult,
    ModelRejected,
    ModelTrained,
    RetrainModel,
    Topic,
)
from shared.messaging import OUTAGE_ERRORS, ConsumerContext, EventPublisher, subscribe
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

Trigger = Literal["data", "drift", "manual", "schedule"]
Outcome = ModelTrained | ModelRejected

#: Failures that are not the training's fault: the trigger is retried or dead-lettered.
DEFERRED: tuple[type[BaseException], ...] = (*OUTAGE_ERRORS, NotFoundError)


@dataclass(frozen=True)
class TrainerPorts:
    """Everything the trainer's handlers talk to."""

    batches: BatchSource
    history: BatchHistory
    pending: PendingTriggers
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
    policy: CoalescePolicy = field(default_factory=CoalescePolicy)
    clock: Callable[[], float] = field(default=time.time)
    older_batches: int = 0
    """Batches before the window whose rows are sampled in (``config.older_fraction``)."""

    async def on_data_arrived(self, event: DataArrived) -> None:
        """Check the batch (a bad one is dead-lettered), remember it, leave training pending.

        A batch whose content was recorded before is a counted no-op; one with fewer
        new rows than the policy's minimum waits, pending, for more data.
        """
        frame = await asyncio.to_thread(self.ports.batches.load, event.dataset)
        check_announced_rows(event.dataset, frame)
        if not await self.ports.history.record(self.model_name, event.dataset):
            log.info("duplicate batch ignored", extra={"sha256": event.dataset.sha256})
            self._count("data", "duplicate")
            return
        await self.ports.pending.add(self.model_name, PendingArrival(event, self.clock()))
        self._count("data", "accepted")
        waiting = new_rows(await self.ports.pending.waiting(self.model_name))
        if waiting < self.policy.min_rows:
            log.info(
                "batch recorded; too few new rows to retrain yet",
                extra={"new_rows": waiting, "min_new_rows": self.policy.min_rows},
            )

    async def on_drift_detected(self, event: DriftDetected) -> None:
        """Retrain at once on the recent window, in the drift's turn of the loop."""
        if event.model_name != self.model_name:
            log.warning("drift of another model ignored", extra={"model": event.model_name})
            self._count("drift", "ignored")
            return
        await self._train_now(event, "drift")

    async def on_retrain_requested(self, event: RetrainModel) -> None:
        """Retrain at once because a person (``flywheel retrain``) asked for it."""
        if event.model_name != self.model_name:
            log.warning("retrain of another model ignored", extra={"model": event.model_name})
            self._count("manual", "ignored")
            return
        await self._train_now(event, "manual")

    async def on_schedule(self) -> RetrainModel:
        """Retrain on the recent window because the schedule says so (trigger "schedule")."""
        tick = RetrainModel(producer="trainer", model_name=self.model_name, reason="schedule")
        await self._train_now(tick, "schedule")
        return tick

    async def train_pending(self) -> bool:
        """Train once on the pending arrivals if the policy says so; True when it did."""
        waiting = await self.ports.pending.waiting(self.model_name)
        if self.policy.decide(waiting, self.clock()) != "train":
            return False
        async with self.ports.lock.hold(self.model_name):
            # Re-read under the lock: another replica may have trained on them meanwhile.
            covered = await self.ports.pending.waiting(self.model_name)
            if not covered:
                return False
            cause = newest(covered)
            try:
                outcome = await self._train(cause, "data", covered)
            except FlywheelError as error:
                if error.retryable:
                    raise
                outcome = self._rejected(cause, "data", error)
            await self._finish(outcome, covered)
        self.metrics.coalesced.inc(len(covered) - 1)
        return True

    async def _train_now(self, cause: Event, trigger: Trigger) -> None:
        self._count(trigger, "accepted")
        async with self.ports.lock.hold(self.model_name):
            # Pending arrivals are in the recent window: this training covers them too.
            covered = await self.ports.pending.waiting(self.model_name)
            await self._finish(await self._train(cause, trigger, covered), covered)

    async def _finish(self, outcome: Outcome, covered: list[PendingArrival]) -> None:
        # Publish before forgetting: a crash in between trains twice rather than never.
        await self.ports.publisher.publish(outcome)
        await self.ports.pending.remove(self.model_name, covered)

    async def _train(
        self, cause: Event, trigger: Trigger, covered: list[PendingArrival]
    ) -> Outcome:
        count = self.window_batches + self.older_batches
        refs = await self.ports.history.recent(self.model_name, count)
        if not refs:
            raise NotFoundError(
                f"no batches recorded for {self.model_name}; nothing to train on "
                "(announce the batches; /readyz says whether Redis lost the list)"
            )
        ids = tuple(dict.fromkeys([cause.event_id, *(p.event.event_id for p in covered)]))
        started = time.perf_counter()
        try:
            trained = await asyncio.to_thread(self._fit_and_log, cause, trigger, refs, ids)
        except DEFERRED:
            self.metrics.trainings.labels(trigger, "deferred").inc()
            raise
        except Exception as error:  # NaN loss, out of memory, a class missing…
            return self._rejected(cause, trigger, error)
        elapsed = time.perf_counter() - started
        self.metrics.trainings.labels(trigger, "succeeded").inc()
        self.metrics.training_seconds.labels(trigger).observe(elapsed)
        log.info("model trained", extra={"run_id": trained.run_id, "seconds": round(elapsed, 2)})
        return trained

    def _rejected(self, cause: Event, trigger: Trigger, error: Exception) -> ModelRejected:
        self.metrics.trainings.labels(trigger, "failed").inc()
        log.error("training failed", extra={"error": repr(error), "trigger": trigger})
        detail = f"{type(error).__name__}: {error}"
        reason = GateResult(name="training", passed=False, detail=detail)
        return ModelRejected.caused_by(
            cause, producer="trainer", model_name=self.model_name, reasons=(reason,)
        )

    def _count(self, trigger: Trigger, outcome: str) -> None:
        self.metrics.triggers.labels(trigger, outcome).inc()

    def _fit_and_log(
        self, cause: Event, trigger: Trigger, refs: list[DatasetRef], trigger_ids: tuple[str, ...]
    ) -> ModelTrained:
        """Blocking: load the window (and older sample), fit, log, describe the result."""
        batches = self._load_window(refs[-self.window_batches :])
        older = self._load_older(refs[: -self.window_batches])
        frame = training_frame(
            [f for _, f in batches],
            [f for _, f in older],
            self.config.older_fraction,
            self.config.seed,
        )
        model = train(frame, self.spec, self.config)
        used = tuple(ref for ref, _ in batches)
        sampled = tuple(ref for ref, _ in older)
        policy = (
            [f"older-sample:{self.config.older_fraction}:{self.config.seed}"] if sampled else []
        )
        version = data_version([*(ref.sha256 for ref in (*sampled, *used)), *policy])
        context = RunContext(
            self.model_name,
            version,
            trigger,
            cause.event_id,
            cause.correlation_id,
            used,
            trigger_ids,
            sampled,
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
            datasets=(*sampled, *used),
            trigger=trigger,
        )

    def _load_window(self, refs: list[DatasetRef]) -> list[tuple[DatasetRef, pd.DataFrame]]:
        """The window's batches; an older batch that went missing is skipped, not fatal."""
        batches = []
        for ref in refs:
            try:
                batches.append((ref, self.ports.batches.load(ref)))
            except (NotFoundError, InvalidInputError) as error:
                log.warning("batch skipped", extra={"uri": ref.uri, "error": str(error)})
        if not batches:
            raise NotFoundError(f"none of the {len(refs)} recent batches can be read")
        return batches

    def _load_older(self, refs: list[DatasetRef]) -> list[tuple[DatasetRef, pd.DataFrame]]:
        """Older batches to sample from; unreadable ones are skipped."""
        if not refs or self.config.older_fraction <= 0:
            return []
        older = []
        for ref in refs:
            try:
                older.append((ref, self.ports.batches.load(ref)))
            except (NotFoundError, InvalidInputError) as error:
                log.warning("older batch skipped", extra={"uri": ref.uri, "error": str(error)})
        return older


def register(consumer: ConsumerContext, handlers: TrainerHandlers) -> None:
    """Subscribe the trainer's handlers (consumer group flywheel-trainer)."""
    subscribe(consumer, Topic.DATA_ARRIVED, DataArrived, handlers.on_data_arrived)
    subscribe(consumer, Topic.DRIFT_DETECTED, DriftDetected, handlers.on_drift_detected)
    subscribe(consumer, Topic.RETRAIN_MODEL, RetrainModel, handlers.on_retrain_requested)
