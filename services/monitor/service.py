"""The monitor's service layer: each model's drift monitoring through the ports.

Every model has its own ``ModelMonitor``: its lock, its champion's reference, its
saved window and its alarms. One model's trouble (a reference that fails to load,
a saved state that does not restore) neither waits on nor fails another's events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.monitor.core import (
    UNRESTORABLE,
    DriftConfig,
    Hold,
    ModelDrift,
    Reference,
    ReferenceRefresh,
    Save,
    SavedState,
)
from services.monitor.metrics import MonitorMetrics
from services.monitor.ports import ReferenceStore, RoutingState, StateStore
from shared.catalog import ModelCatalog
from shared.errors import FlywheelError
from shared.events import DriftDetected, FeedbackReceived, PredictionLogged
from shared.messaging import OUTAGE_ERRORS, EventPublisher

log = logging.getLogger(__name__)

#: Labelled outcomes between saves of a model whose predictions are not windowed (its
#: version has no usable sample): its trackers have no batch save to ride along with.
OUTCOMES_PER_SAVE = 100


class ModelUnavailableError(FlywheelError):
    """A model's reference cannot be loaded: its events fail at once for a while.

    Not retryable: the model is held, so retrying at once would fail the same way.
    """


@dataclass(frozen=True)
class MonitorPorts:
    """Everything the monitor talks to."""

    references: ReferenceStore
    states: StateStore
    publisher: EventPublisher
    routing: RoutingState | None = None


class ModelMonitor:
    """One model's drift windows and accuracy trackers, kept against its champion."""

    def __init__(
        self,
        model_name: str,
        ports: MonitorPorts,
        catalog: ModelCatalog,
        config: DriftConfig,
        metrics: MonitorMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_name = model_name
        self.drift: ModelDrift | None = None
        self._ports, self._catalog, self._config = ports, catalog, config
        self._metrics, self._clock = metrics, clock
        self._reported: Reference | None = None
        self._refresh = ReferenceRefresh(config.reference_refresh_s)
        self._hold = Hold(config.hold_s)
        self._judged_unsaved = 0
        # One path for every change to this model's window and its save: a promotion
        # handled while a batch awaited its alarm saved the old window's rows under the
        # new window's state. Other models have locks of their own.
        self._lock = asyncio.Lock()

    async def count(self, events: Sequence[PredictionLogged]) -> None:
        """Count this model's predictions; publish drift when a window alarms."""
        async with self._lock:
            drift = await self._current()
            # A version without a usable sample: said once when switched to, not per batch.
            if drift is not None and drift.testable:
                await self._count(drift, drift.fresh(events))

    async def judge(self, event: FeedbackReceived) -> None:
        """Update the variant's accuracy or loss; publish concept drift when it worsened."""
        async with self._lock:
            drift = await self._current()
            judged = drift.judge(event) if drift is not None else None
            if drift is None or judged is None:
                return
            labels = (self.model_name, event.variant, event.version)
            self._metrics.feedback.labels(*labels).inc()
            if judged.accuracy is not None:
                self._metrics.model_accuracy.labels(*labels).set(judged.accuracy)
            if judged.loss is not None:
                self._metrics.model_loss.labels(*labels).set(judged.loss)
            self._judged_unsaved += 1
            if judged.drift is not None:
                await self._alarm(judged.drift)
            # Saved at once after an alarm, so a restart cannot raise it again; otherwise
            # with the next batch, or every so often when no batch is counted (no sample).
            due = not drift.testable and self._judged_unsaved >= OUTCOMES_PER_SAVE
            if judged.drift is not None or due:
                await self._save(drift.state_only())
                self._judged_unsaved = 0

    async def switch(self, version: str) -> None:
        """Test against ``version``'s reference at once (a promotion, rollback or approval).

        The same version is read again: a reference absent before may be there now.
        """
        async with self._lock:
            self._refresh.want(version)
            self._hold.release()  # the new champion's reference may well load
            await self._current()

    async def _count(self, drift: ModelDrift, events: list[PredictionLogged]) -> None:
        if not events and not drift.unsaved:
            return  # all repeats (a batch retried after another model failed): nothing to save
        try:
            counted = drift.count(events)
            newest = max((e.occurred_at for e in events), default=None)
            self._metrics.counted(self.model_name, counted, newest)
            for alarm in counted.alarms:
                await self._alarm(alarm)
            await self._save(counted.save)
            drift.saved()
        except BaseException:
            self.drift = None  # the store holds the truth: reload it before the retry
            raise

    async def _save(self, save: Save) -> None:
        await self._ports.states.save(self.model_name, *save)

    async def _alarm(self, drift: DriftDetected) -> None:
        """Publish ``drift`` unless an experiment is running: its challenger is the answer.

        A challenger trained on recent data is already under test; a retrain now would
        supersede that experiment, and a lasting drift would do so every cool-down,
        so no experiment could finish.
        """
        features = [f.feature for f in drift.features if f.drifted]
        extra = {"model": self.model_name, "kind": drift.kind, "features": features}
        experiment = await self._running_experiment()
        if experiment is not None:
            self._metrics.drift_suppressed.labels(self.model_name, drift.kind).inc()
            log.info("drift not published: an experiment is running", extra=extra)
            return
        log.warning("drift detected", extra=extra)
        await self._ports.publisher.publish(drift)
        self._metrics.drift_events.labels(self.model_name, drift.kind).inc()

    async def _running_experiment(self) -> str | None:
        if self._ports.routing is None:
            return None
        try:
            return await self._ports.routing.running_experiment(self.model_name)
        except Exception as error:
            # Better a retrain too many than a drift nobody hears of.
            log.warning("routing state unreadable; drift published", extra={"error": repr(error)})
            return None

    async def _current(self) -> ModelDrift | None:
        """The model's drift state against its champion, looked up again when due."""
        now = self._clock()
        held = self._hold.cause(now)
        if held is not None:
            raise ModelUnavailableError(f"model {self.model_name!r} held: {held}")
        if not self._refresh.due(now, loaded=self.drift is not None):
            return self.drift
        reference = await self._reference(self._refresh.lookup(now), now)
        self._refresh.found()
        if reference is not None and (
            self.drift is None
            or self.drift.reference.version != reference.version
            or self.drift.testable != reference.testable  # its sample appeared, or broke
        ):
            await self._switch_to(reference)
        return self.drift

    async def _reference(self, version: str | None, now: float) -> Reference | None:
        try:
            spec = await self._catalog.spec(self.model_name)
            return await asyncio.to_thread(
                self._ports.references.reference, self.model_name, spec, version
            )
        except OUTAGE_ERRORS:
            raise  # everyone's outage: the batch waits and is retried
        except Exception as error:
            self._hold.trip(now, f"its reference failed to load: {error!r}")
            self._metrics.model_failures.labels(self.model_name).inc()
            log.warning(
                "reference not loaded; the model's events fail for a while",
                extra={"model": self.model_name, "error": repr(error)},
            )
            raise ModelUnavailableError(f"{self.model_name!r}: {error!r}") from error

    async def _switch_to(self, reference: Reference) -> None:
        saved = await self._load_saved()
        drift = ModelDrift.start(self.model_name, reference, self._config)
        try:
            restored = saved is not None and drift.restore(saved)
        except UNRESTORABLE as error:
            drift = ModelDrift.start(self.model_name, reference, self._config)
            await self._discard("inconsistent", error)
        else:
            if saved is not None and not restored:
                await self._ports.states.clear(self.model_name)  # another version's windows
        window = drift.detector.window_size
        self._metrics.reference_switched(self.model_name, reference, window, self._reported)
        self._reported, self.drift = reference, drift
        for feature in reference.missing:
            log.warning(
                "feature missing from the reference, not tested",
                extra={"model": self.model_name, "feature": feature},
            )
        if reference.unavailable is not None:
            log.warning(
                "data drift not tested for this version: no usable reference sample",
                extra={
                    "model": self.model_name,
                    "version": reference.version,
                    "reason": reference.unavailable,
                },
            )
        log.info(
            "drift reference switched",
            extra={"model": self.model_name, "version": reference.version},
        )

    async def _load_saved(self) -> SavedState | None:
        try:
            return await self._ports.states.load(self.model_name)
        except (ValueError, TypeError) as error:  # outages are neither: they propagate
            await self._discard("unreadable", error)
            return None

    async def _discard(self, reason: str, error: BaseException) -> None:
        """Start from an empty window: a state that cannot be restored must not stop traffic."""
        log.warning(
            "saved monitor state discarded",
            extra={"model": self.model_name, "reason": reason, "error": repr(error)},
        )
        self._metrics.state_discarded.labels(self.model_name, reason).inc()
        await self._ports.states.clear(self.model_name)


class ModelMonitors:
    """A ``ModelMonitor`` per model, made when the model's first event arrives."""

    def __init__(
        self,
        ports: MonitorPorts,
        catalog: ModelCatalog,
        config: DriftConfig,
        metrics: MonitorMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog, self.metrics = catalog, metrics
        self._ports, self._config, self._clock = ports, config, clock
        self._monitors: dict[str, ModelMonitor] = {}

    def of(self, model_name: str) -> ModelMonitor:
        """``model_name``'s monitor."""
        if model_name not in self._monitors:
            self._monitors[model_name] = ModelMonitor(
                model_name, self._ports, self.catalog, self._config, self.metrics, self._clock
            )
        return self._monitors[model_name]
