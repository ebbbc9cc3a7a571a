"""prediction-logged → drift windows → drift-detected."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from services.monitor.core import DriftDetector
from services.monitor.metrics import MonitorMetrics
from services.monitor.ports import ReferenceStore
from services.monitor.settings import Settings
from shared.events import DriftDetected, FeatureDrift, PredictionLogged
from shared.messaging import EventPublisher

log = logging.getLogger(__name__)


@dataclass
class DriftMonitor:
    """Keeps one detector against the current champion's reference and reports drift."""

    settings: Settings
    references: ReferenceStore
    publisher: EventPublisher
    metrics: MonitorMetrics
    detector: DriftDetector | None = None
    _checked_at: float = field(default=float("-inf"))
    _window_start: PredictionLogged | None = None

    async def on_prediction(self, event: PredictionLogged) -> None:
        """Add a prediction's features to the window; publish drift when the window alarms."""
        detector = await self._current_detector()
        if detector is None:
            return
        self._window_start = self._window_start or event
        self.metrics.observations.inc()
        verdict = detector.add(event.features)
        if verdict is None:
            return
        window_start, self._window_start = self._window_start, None
        for result in verdict.features:
            self.metrics.drift_score.labels(result.feature).set(result.statistic)
            self.metrics.drift_p_value.labels(result.feature).set(result.p_value)
        if verdict.alarm:
            await self._report(detector, verdict.features, window_start, event)

    async def _current_detector(self) -> DriftDetector | None:
        now = time.monotonic()
        if now - self._checked_at < self.settings.reference_refresh_s and self.detector:
            return self.detector
        self._checked_at = now
        model_name = self.settings.model_name
        reference = await asyncio.to_thread(self.references.champion_reference, model_name)
        if reference is not None and (
            self.detector is None or self.detector.reference.version != reference.version
        ):
            self.detector = DriftDetector(
                reference,
                window_size=self.settings.window_size,
                alpha=self.settings.alpha,
                persistence=self.settings.persistence,
                cooldown_windows=self.settings.cooldown_windows,
            )
        return self.detector

    async def _report(
        self,
        detector: DriftDetector,
        results: list[FeatureDrift],
        first: PredictionLogged,
        last: PredictionLogged,
    ) -> None:
        # Drift opens a new turn of the loop: a fresh correlation id, caused by the
        # prediction that closed the window.
        event = DriftDetected(
            producer="monitor",
            causation_id=last.event_id,
            kind="data",
            model_name=self.settings.model_name,
            reference_version=detector.reference.version,
            window_size=detector.window_size,
            reference_size=detector.reference.size,
            window_start=first.occurred_at,
            window_end=last.occurred_at,
            features=tuple(results),
        )
        await self.publisher.publish(event)
        self.metrics.drift_events.labels("data").inc()
        drifted = [r.feature for r in results if r.drifted]
        log.warning("drift detected", extra={"features": drifted, "drift_event": event.event_id})
