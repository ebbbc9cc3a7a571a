"""Trainer handlers: data, drift or a request to retrain → one training → ModelTrained.

Every model registered in the catalog has its own loop: its batch history,
pending arrivals, lock and storm control are keyed by the event's model, and
its spec comes from the catalog. An event for a model nobody registered is
dead-lettered with the known models named.

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
from typing import NamedTuple

import pandas as pd

from services.trainer.coalesce import CoalescePolicy, PendingArrival, new_rows, newest
from services.trainer.core import (
    TrainingConfig,
    check_announced_rows,
    data_version,
    train,
    training_frame,
)
from services.trainer.custom import TrainerError, train_custom
from services.trainer.metrics import TrainerMetrics
from services.trainer.ports import (
    BatchHistory,
    BatchSource,
    ModelStore,
    PendingTriggers,
    RunContext,
    TrainingLock,
)
from shared.catalog import ModelCatalog
from shared.errors import FlywheelError, InvalidInputError, NotFoundError
from shared.events import (
    DataArrived,
    DatasetRef,
    DriftDetected,
    Event,
    GateResult,
    ModelRegistered,
    ModelRejected,
    ModelTrained,
    RetrainModel,
    Topic,
    Trigger,
)
from shared.messaging import (
    OUTAGE_ERRORS,
    ConsumerContext,
    EventPublisher,
    subscribe,
    subscribe_broadcast,
)
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

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


class Training(NamedTuple):
    """One training to run: the model, the spec it is trained to, and why."""

    model: str
    spec: ModelSpec
    trigger: Trigger


@dataclass(frozen=True)
class TrainerHandlers:
    """The trainer's event handlers, sharing one training path, for every registered model."""

    ports: TrainerPorts
    catalog: ModelCatalog
    config: TrainingConfig
    window_batches: int
    metrics: TrainerMetrics
    policy: CoalescePolicy = field(default_factory=CoalescePolicy)
    clock: Callable[[], float] = field(default=time.time)
    older_batches: int = 0
    """Batches before the window whose rows are sampled in (``config.older_fraction``)."""

    async def on_model_registered(self, event: ModelRegistered) -> None:
        """Take a new or changed spec: the model's next batches and trainings use it."""
        if self.catalog.apply(event):
            log.info(
                "model spec refreshed",
                extra={"model": event.model_name, "revision": event.spec_revision},
            )

    async def on_data_arrived(self, event: DataArrived) -> None:
        """Check the batch against its model's spec (a bad one is dead-lettered), remember it.

        A batch whose content was recorded before for that model is a counted no-op;
        one with fewer new rows than the policy's minimum waits, pending, for more data.
        """
        model = await self._model_of(event)
        spec = await self.catalog.spec(model)
        try:
            frame = await asyncio.to_thread(self.ports.batches.load, event.dataset, spec)
            check_announced_rows(event.dataset, frame)
        except InvalidInputError as error:
            raise InvalidInputError(f"batch for model {model!r}: {error}") from error
        if not await self.ports.history.record(model, event.dataset):
            log.info(
                "duplicate batch ignored", extra={"model": model, "sha256": event.dataset.sha256}
            )
            self._count(model, "data", "duplicate")
            return
        await self.ports.pending.add(model, PendingArrival(event, self.clock()))
        self._count(model, "data", "accepted")
        waiting = new_rows(await self.ports.pending.waiting(model))
        if waiting < self.policy.min_rows:
            log.info(
                "batch recorded; too few new rows to retrain yet",
                extra={"model": model, "new_rows": waiting, "min_new_rows": self.policy.min_rows},
            )

    async def on_drift_detected(self, event: DriftDetected) -> None:
        """Retrain the drifted model at once on its recent window, in the drift's turn."""
        await self._train_now(event, event.model_name, "drift")

    async def on_retrain_requested(self, event: RetrainModel) -> None:
        """Retrain at once because a person (``flywheel retrain``) asked for it."""
        await self._train_now(event, event.model_name, "manual")

    async def on_schedule(self, model_name: str) -> RetrainModel:
        """Retrain ``model_name`` on its recent window because the schedule says so."""
        tick = RetrainModel(producer="trainer", model_name=model_name, reason="schedule")
        await self._train_now(tick, model_name, "schedule")
        return tick

    async def train_pending(self, model_name: str) -> bool:
        """Train the model once on its pending arrivals if the policy says so; True when it did."""
        waiting = await self.ports.pending.waiting(model_name)
        if self.policy.decide(waiting, self.clock()) != "train":
            return False
        job = Training(model_name, await self.catalog.spec(model_name), "data")
        async with self.ports.lock.hold(model_name):
            # Re-read under the lock: another replica may have trained on them meanwhile.
            covered = await self.ports.pending.waiting(model_name)
            if not covered:
                return False
            cause = newest(covered)
            try:
                outcome = await self._train(job, cause, covered)
            except FlywheelError as error:
                if error.retryable:
                    raise
                outcome = self._rejected(job, cause, error)
            await self._finish(model_name, outcome, covered)
        self.metrics.coalesced.labels(model_name=model_name).inc(len(covered) - 1)
        return True

    async def _model_of(self, event: DataArrived) -> str:
        # No model named: the deployment's default (deprecated, see DataArrived.model_name).
        model = event.model_name or self.catalog.default_name
        if model is None:
            known = ", ".join(await self.catalog.names()) or "none"
            raise InvalidInputError(
                f"data-arrived names no model and no default model is configured; "
                f"registered models: {known}"
            )
        return model

    async def _train_now(self, cause: Event, model_name: str, trigger: Trigger) -> None:
        # An unregistered model raises UnknownModelError here: the event is dead-lettered.
        job = Training(model_name, await self.catalog.spec(model_name), trigger)
        self._count(model_name, trigger, "accepted")
        async with self.ports.lock.hold(model_name):
            # Pending arrivals are in the recent window: this training covers them too.
            covered = await self.ports.pending.waiting(model_name)
            await self._finish(model_name, await self._train(job, cause, covered), covered)

    async def _finish(
        self, model_name: str, outcome: Outcome, covered: list[PendingArrival]
    ) -> None:
        # Publish before forgetting: a crash in between trains twice rather than never.
        await self.ports.publisher.publish(outcome)
        await self.ports.pending.remove(model_name, covered)

    async def _train(self, job: Training, cause: Event, covered: list[PendingArrival]) -> Outcome:
        count = self.window_batches + self.older_batches
        refs = await self.ports.history.recent(job.model, count)
        if not refs:
            raise NotFoundError(
                f"no batches recorded for {job.model}; nothing to train on "
                "(announce the batches; /readyz says whether Redis lost the list)"
            )
        ids = tuple(dict.fromkeys([cause.event_id, *(p.event.event_id for p in covered)]))
        started = time.perf_counter()
        try:
            trained = await asyncio.to_thread(self._fit_and_log, job, cause, refs, ids)
        except DEFERRED:
            self.metrics.trainings.labels(job.model, job.trigger, "deferred").inc()
            raise
        except Exception as error:  # NaN loss, out of memory, a class missing…
            return self._rejected(job, cause, error)
        elapsed = time.perf_counter() - started
        self.metrics.trainings.labels(job.model, job.trigger, "succeeded").inc()
        self.metrics.training_seconds.labels(job.model, job.trigger).observe(elapsed)
        log.info(
            "model trained",
            extra={"model": job.model, "run_id": trained.run_id, "seconds": round(elapsed, 2)},
        )
        return trained

    def _rejected(self, job: Training, cause: Event, error: Exception) -> ModelRejected:
        self.metrics.trainings.labels(job.model, job.trigger, "failed").inc()
        log.error(
            "training failed",
            extra={"model": job.model, "error": repr(error), "trigger": job.trigger},
        )
        if isinstance(error, TrainerError):  # the team's trainer: its message names it
            reason = GateResult(name="trainer", passed=False, detail=str(error))
        else:
            detail = f"{type(error).__name__}: {error}"
            reason = GateResult(name="training", passed=False, detail=detail)
        return ModelRejected.caused_by(
            cause, producer="trainer", model_name=job.model, reasons=(reason,)
        )

    def _count(self, model_name: str, trigger: Trigger, outcome: str) -> None:
        self.metrics.triggers.labels(model_name, trigger, outcome).inc()

    def _fit_and_log(
        self, job: Training, cause: Event, refs: list[DatasetRef], trigger_ids: tuple[str, ...]
    ) -> ModelTrained:
        """Blocking: load the window (and older sample), fit, log, describe the result."""
        batches = self._load_window(refs[-self.window_batches :], job.spec)
        older = self._load_older(refs[: -self.window_batches], job.spec)
        frame = training_frame(
            [f for _, f in batches],
            [f for _, f in older],
            self.config.older_fraction,
            self.config.seed,
        )
        # A spec naming the team's own trainer is trained by it; else Flywheel's candidates.
        fit = train_custom if job.spec.trainer else train
        model = fit(frame, job.spec, self.config)
        used = tuple(ref for ref, _ in batches)
        sampled = tuple(ref for ref, _ in older)
        policy = (
            [f"older-sample:{self.config.older_fraction}:{self.config.seed}"] if sampled else []
        )
        version = data_version([*(ref.sha256 for ref in (*sampled, *used)), *policy])
        context = RunContext(
            model_name=job.model,
            data_version=version,
            trigger=job.trigger,
            event_id=cause.event_id,
            correlation_id=cause.correlation_id,
            datasets=used,
            trigger_ids=trigger_ids,
            sampled=sampled,
            label=job.spec.label,
        )
        run_id = self.ports.store.log_training(model, context)
        return ModelTrained.caused_by(
            cause,
            producer="trainer",
            model_name=job.model,
            run_id=run_id,
            model_uri=f"runs:/{run_id}/model",
            algorithm=model.algorithm,
            metrics=model.metrics,
            data_version=version,
            datasets=(*sampled, *used),
            trigger=job.trigger,
        )

    def _load_window(
        self, refs: list[DatasetRef], spec: ModelSpec
    ) -> list[tuple[DatasetRef, pd.DataFrame]]:
        """The window's batches; an older batch that went missing is skipped, not fatal."""
        batches = self._readable(refs, spec, "batch skipped")
        if not batches:
            raise NotFoundError(f"none of the {len(refs)} recent batches can be read")
        return batches

    def _load_older(
        self, refs: list[DatasetRef], spec: ModelSpec
    ) -> list[tuple[DatasetRef, pd.DataFrame]]:
        """Older batches to sample from; unreadable ones are skipped."""
        if not refs or self.config.older_fraction <= 0:
            return []
        return self._readable(refs, spec, "older batch skipped")

    def _readable(
        self, refs: list[DatasetRef], spec: ModelSpec, warning: str
    ) -> list[tuple[DatasetRef, pd.DataFrame]]:
        loaded = []
        for ref in refs:
            try:
                loaded.append((ref, self.ports.batches.load(ref, spec)))
            except (NotFoundError, InvalidInputError) as error:
                log.warning(warning, extra={"uri": ref.uri, "error": str(error)})
        return loaded


def register(consumer: ConsumerContext, handlers: TrainerHandlers) -> None:
    """Subscribe the trainer's handlers (consumer group flywheel-trainer).

    Model registrations reach every replica (each keeps its own catalog).
    """
    subscribe(consumer, Topic.DATA_ARRIVED, DataArrived, handlers.on_data_arrived)
    subscribe(consumer, Topic.DRIFT_DETECTED, DriftDetected, handlers.on_drift_detected)
    subscribe(consumer, Topic.RETRAIN_MODEL, RetrainModel, handlers.on_retrain_requested)
    subscribe_broadcast(
        consumer, Topic.MODEL_REGISTERED, ModelRegistered, handlers.on_model_registered
    )
