"""prediction-logged batches → drift windows; feedback → accuracy; both → drift-detected."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.monitor.core import (
    AccuracyCusum,
    ConceptVerdict,
    DriftDetector,
    Reference,
    WindowMark,
    WindowVerdict,
)
from services.monitor.metrics import MonitorMetrics
from services.monitor.ports import ReferenceStore, RoutingState, SavedState, StateStore
from services.monitor.settings import Settings
from shared.events import (
    DriftDetected,
    FeatureDrift,
    FeedbackReceived,
    ModelPromoted,
    ModelRolledBack,
    PredictionLogged,
)
from shared.messaging import EventPublisher

log = logging.getLogger(__name__)

#: What a saved state that cannot be restored raises while it is read back.
UNRESTORABLE = (ValueError, KeyError, TypeError, IndexError)

#: Drift event ids derive from the window that caused them, so a replay after a
#: crash republishes the same id and consumers drop it as a duplicate.
DRIFT_ID_NAMESPACE = uuid.UUID("6f1c7a52-2f7e-4c1e-9a51-5b0f6a3c9d10")


@dataclass
class DriftMonitor:
    """One detector against the current champion's reference, its state kept in a store."""

    settings: Settings
    references: ReferenceStore
    publisher: EventPublisher
    metrics: MonitorMetrics
    states: StateStore
    routing: RoutingState | None = None
    detector: DriftDetector | None = None
    accuracy: dict[tuple[str, str], AccuracyCusum] = field(default_factory=dict)
    _fired: set[tuple[str, str]] = field(default_factory=set)
    _recent: dict[str, None] = field(default_factory=dict)
    _unsaved_window: bool = True
    _checked_at: float = float("-inf")
    _wanted_version: str | None = None
    # One path for every change to the detector and its save: a promotion handled while a
    # batch awaited its alarm saved the old window's rows under the new window's state.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def on_predictions(self, events: Sequence[PredictionLogged]) -> None:
        """Count a batch of predictions into the window; publish drift when a window alarms."""
        async with self._lock:
            await self._count_batch(events)

    async def _count_batch(self, events: Sequence[PredictionLogged]) -> None:
        detector = await self._current_detector()
        if detector is None:
            return
        name = self.settings.model_name
        # Shadow answers mirror rows already counted from the champion's answer.
        fresh = [
            e
            for e in events
            if e.model_name == name and not e.shadow and e.event_id not in self._recent
        ]
        try:
            added, closed = await self._count(detector, fresh)
            restart = bool(closed) or self._unsaved_window
            count = detector.filled if restart else added
            rows = detector.rows(last=count) if count else None
            self._remember(fresh)
            pooled = detector.pooled_chunks(closed)
            await self.states.save(
                name, self._state(), rows, restart, pooled, detector.pooled_windows
            )
            self._unsaved_window = False
        except BaseException:
            self.detector = None  # the store holds the truth: reload it before the retry
            raise

    def _remember(self, events: list[PredictionLogged]) -> None:
        # Ids of the last batches: all that a redelivery after a crash can repeat.
        for event in events:
            self._recent[event.event_id] = None
        while len(self._recent) > 2 * self.settings.batch_size:
            del self._recent[next(iter(self._recent))]

    async def _count(
        self, detector: DriftDetector, events: list[PredictionLogged]
    ) -> tuple[int, int]:
        """Add the rows; return how many were kept and how many windows closed."""
        marks = [
            WindowMark(e.occurred_at.isoformat(), e.event_id, e.correlation_id) for e in events
        ]
        outcome = detector.add_rows([e.features for e in events], marks)
        for reason, count in outcome.rejected.items():
            self.metrics.rejected_rows.labels(reason).inc(count)
        self.metrics.observations.inc(len(events) - sum(outcome.rejected.values()))
        self.metrics.window_fill.set(detector.filled)
        if events:
            newest = max(e.occurred_at for e in events)
            self.metrics.lag_seconds.set((datetime.now(UTC) - newest).total_seconds())
        for verdict in outcome.verdicts:
            for result in verdict.features:
                self.metrics.drift_score.labels(result.feature).set(result.statistic)
                self.metrics.drift_p_value.labels(result.feature).set(result.p_value)
            if verdict.alarm:
                await self._alarm(self._data_drift(detector, verdict))
        return len(events) - sum(outcome.rejected.values()), len(outcome.verdicts)

    async def on_feedback(self, event: FeedbackReceived) -> None:
        """Update the variant's accuracy; publish concept drift when its drop is significant."""
        async with self._lock:
            await self._count_feedback(event)

    async def _count_feedback(self, event: FeedbackReceived) -> None:
        correct = _correct(event) if event.model_name == self.settings.model_name else None
        detector = await self._current_detector()
        if correct is None or detector is None or detector.reference.baseline_accuracy is None:
            return
        tracker = self._tracker(detector.reference, event.variant, event.version)
        verdict = tracker.add(correct)
        self.metrics.feedback.labels(event.variant, event.version).inc()
        if (event.variant, event.version) in self._fired or event.variant != "champion":
            # One concept drift per champion version. A challenger is measured against the
            # champion's validation accuracy, not its own, and judged by the router's
            # experiment: alarming on it retrained a new challenger that superseded the
            # experiment, again and again, so no experiment ever finished.
            verdict = None
        accuracy = tracker.rolling_accuracy
        if accuracy is not None:
            self.metrics.model_accuracy.labels(event.variant, event.version).set(accuracy)
        if verdict is not None:
            self._fired.add((event.variant, event.version))
            await self._alarm(self._concept_drift(detector, event, verdict))
            # Saved at once so a restart cannot raise it again; otherwise with the next batch.
            await self.states.save(self.settings.model_name, self._state(), None, False, [], 0)

    async def _alarm(self, drift: DriftDetected) -> None:
        """Publish ``drift`` unless an experiment is running: its challenger is the answer.

        A challenger trained on recent data is already under test; a retrain now would
        supersede that experiment, and a lasting drift would do so every cool-down,
        so no experiment could finish.
        """
        experiment = await self._running_experiment()
        if experiment is not None:
            self.metrics.drift_suppressed.labels(drift.kind).inc()
            log.info(
                "drift not published: an experiment is running",
                extra={"kind": drift.kind, "experiment_id": experiment},
            )
            return
        await self.publisher.publish(drift)
        self.metrics.drift_events.labels(drift.kind).inc()

    async def _running_experiment(self) -> str | None:
        if self.routing is None:
            return None
        try:
            return await self.routing.running_experiment(self.settings.model_name)
        except Exception as error:
            # Better a retrain too many than a drift nobody hears of.
            log.warning("routing state unreadable; drift published", extra={"error": repr(error)})
            return None

    async def on_champion_changed(self, event: ModelPromoted | ModelRolledBack) -> None:
        """Switch the reference to the new champion's sample at once."""
        if event.model_name != self.settings.model_name:
            return
        async with self._lock:
            self._wanted_version = event.version
            self._checked_at = float("-inf")
            await self._current_detector()

    async def _current_detector(self) -> DriftDetector | None:
        now = time.monotonic()
        if self.detector and now - self._checked_at < self.settings.reference_refresh_s:
            return self.detector
        self._checked_at = now
        reference = await asyncio.to_thread(
            self.references.reference, self.settings.model_name, self._wanted_version
        )
        self._wanted_version = None
        if reference is not None and (
            self.detector is None or self.detector.reference.version != reference.version
        ):
            await self._switch_to(reference)
        return self.detector

    async def _switch_to(self, reference: Reference) -> None:
        saved = await self._load_saved()
        self.accuracy, self._fired, self._recent = {}, set(), {}
        self._unsaved_window = True
        detector = self._new_detector(reference)
        try:
            restored = saved is not None and self._restore(detector, reference, saved)
        except UNRESTORABLE as error:
            detector = self._new_detector(reference)
            await self._discard("inconsistent", error)
        else:
            if saved is not None and not restored:
                await self.states.clear(self.settings.model_name)  # another version's windows
        self._report_reference(reference)
        self.metrics.window_size.set(detector.window_size)
        self.detector = detector
        log.info("drift reference switched", extra={"version": reference.version})

    def _new_detector(self, reference: Reference) -> DriftDetector:
        return DriftDetector(
            reference,
            window_size=self.settings.window_size,
            alpha=self.settings.alpha,
            persistence=self.settings.persistence,
            cooldown_windows=self.settings.cooldown_windows,
            correction=self.settings.correction,
            strong_alpha=self.settings.strong_alpha,
            pooled_windows=self.settings.pooled_windows,
            pooled_alpha=self.settings.pooled_alpha,
        )

    async def _load_saved(self) -> SavedState | None:
        try:
            return await self.states.load(self.settings.model_name)
        except (ValueError, TypeError) as error:  # outages are neither: they propagate
            await self._discard("unreadable", error)
            return None

    def _restore(self, detector: DriftDetector, reference: Reference, saved: SavedState) -> bool:
        """Continue from ``saved`` when it is this reference's; False when it is another's."""
        state, rows, pooled = saved
        if state["window"]["version"] != reference.version:
            return False
        detector.restore(state["window"], rows, pooled)
        self._restore_accuracy(reference, state["accuracy"])
        self._recent = dict.fromkeys(state["recent"])
        self._unsaved_window = False
        return True

    async def _discard(self, reason: str, error: BaseException) -> None:
        """Start from an empty window: a state that cannot be restored must not stop traffic."""
        log.warning("saved monitor state discarded", extra={"reason": reason, "error": repr(error)})
        self.metrics.state_discarded.labels(reason).inc()
        self.accuracy, self._fired, self._recent = {}, set(), {}
        self._unsaved_window = True
        await self.states.clear(self.settings.model_name)

    def _report_reference(self, reference: Reference) -> None:
        for feature in reference.missing:
            log.warning(
                "feature missing from the reference, not tested", extra={"feature": feature}
            )
            self.metrics.missing_features.labels(feature).set(1)
        self.metrics.reference_rows.set(reference.size)
        # The alert on live accuracy compares it with this, the champion's own validation.
        self.metrics.validation_accuracy.clear()
        if reference.baseline_accuracy is not None:
            self.metrics.validation_accuracy.labels(
                self.settings.model_name, reference.version
            ).set(reference.baseline_accuracy)

    def _tracker(self, reference: Reference, variant: str, version: str) -> AccuracyCusum:
        key = (variant, version)
        if key not in self.accuracy:
            self.accuracy[key] = AccuracyCusum(
                baseline=reference.baseline_accuracy or 0.0,
                min_drop=self.settings.accuracy_min_drop,
                arl=self.settings.accuracy_arl,
                rolling=self.settings.accuracy_rolling,
            )
        return self.accuracy[key]

    def _state(self) -> dict[str, Any]:
        assert self.detector is not None
        accuracy = {
            f"{variant}|{version}": {**t.state(), "fired": (variant, version) in self._fired}
            for (variant, version), t in self.accuracy.items()
        }
        return {"window": self.detector.state(), "accuracy": accuracy, "recent": list(self._recent)}

    def _restore_accuracy(self, reference: Reference, saved: dict[str, Any]) -> None:
        for key, state in saved.items():
            variant, version = key.split("|", 1)
            self._tracker(reference, variant, version).restore(state)
            if state.get("fired"):
                self._fired.add((variant, version))

    def _data_drift(self, detector: DriftDetector, verdict: WindowVerdict) -> DriftDetected:
        assert verdict.first is not None
        assert verdict.last is not None
        drifted = [r.feature for r in verdict.features if r.drifted]
        log.warning("drift detected", extra={"features": drifted, "window_end": verdict.last.at})
        # Drift opens a new turn of the loop: a fresh correlation id, caused by the
        # prediction that closed the window.
        return DriftDetected(
            event_id=_drift_id("data", detector.reference.version, verdict.last.event_id),
            producer="monitor",
            causation_id=verdict.last.event_id,
            kind="data",
            model_name=self.settings.model_name,
            reference_version=detector.reference.version,
            window_size=detector.window_size,
            reference_size=detector.reference.size,
            window_start=datetime.fromisoformat(verdict.first.at),
            window_end=datetime.fromisoformat(verdict.last.at),
            features=tuple(verdict.features),
            pooled_size=detector.pooled.size if detector.pooled else None,
            window_correlation_id=verdict.last.correlation_id,
        )

    def _concept_drift(
        self, detector: DriftDetector, event: FeedbackReceived, verdict: ConceptVerdict
    ) -> DriftDetected:
        log.warning(
            "concept drift detected",
            extra={"variant": event.variant, "accuracy": verdict.rolling_accuracy},
        )
        result = FeatureDrift(
            feature="accuracy",
            statistic=verdict.rolling_accuracy,
            p_value=verdict.p_value,
            threshold=verdict.baseline,
            drifted=True,
            test="accuracy",
        )
        return DriftDetected(
            event_id=_drift_id("concept", event.version, event.event_id),
            producer="monitor",
            causation_id=event.event_id,
            kind="concept",
            model_name=self.settings.model_name,
            reference_version=detector.reference.version,
            window_size=min(verdict.labelled, self.settings.accuracy_rolling),
            reference_size=max(detector.reference.size, 1),
            window_start=event.occurred_at,
            window_end=event.occurred_at,
            features=(result,),
            window_correlation_id=event.correlation_id,
            variant=event.variant,
            version=event.version,
        )


def _correct(event: FeedbackReceived) -> bool | None:
    if event.correct is not None:
        return event.correct
    if event.true_label is not None:
        return event.true_label == event.predicted_class
    return None


def _drift_id(kind: str, version: str, cause: str) -> str:
    return str(uuid.uuid5(DRIFT_ID_NAMESPACE, f"{kind}:{version}:{cause}"))
