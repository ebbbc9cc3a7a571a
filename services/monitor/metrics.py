"""The monitor's Prometheus collectors, every one about a model labelled ``model_name``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.monitor.core import Counted, Reference


@dataclass(frozen=True)
class MonitorMetrics:
    """Drift scores, p-values, alarms, accuracy or loss, windows and lag, per model."""

    drift_score: Gauge
    drift_p_value: Gauge
    drift_events: Counter
    drift_suppressed: Counter
    observations: Counter
    rejected_rows: Counter
    model_accuracy: Gauge
    window_fill: Gauge
    window_size: Gauge
    reference_rows: Gauge
    missing_features: Gauge
    lag_seconds: Gauge
    state_discarded: Counter
    validation_accuracy: Gauge
    feedback: Counter
    model_failures: Counter
    model_loss: Gauge
    validation_loss: Gauge
    reference_missing: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> MonitorMetrics:
        """Register the collectors on ``registry``."""

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, ["model_name", *labels], registry=registry)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, ["model_name", *labels], registry=registry)

        return cls(
            drift_score=gauge("ml_data_drift_score", "Last window's statistic.", "feature"),
            drift_p_value=gauge("ml_drift_p_value", "Last window's p-value.", "feature"),
            drift_events=counter("ml_drift_events_total", "drift-detected published.", "kind"),
            drift_suppressed=counter(
                "ml_drift_suppressed_total",
                "Drift alarms not published because an experiment was already running.",
                "kind",
            ),
            observations=counter("monitor_observations_total", "Rows added to drift windows."),
            rejected_rows=counter(
                "monitor_rejected_rows_total", "Rows left out of windows, by reason.", "reason"
            ),
            model_accuracy=gauge(
                "ml_model_accuracy", "Rolling accuracy from feedback.", "variant", "version"
            ),
            window_fill=gauge("monitor_window_fill_rows", "Rows in the open window."),
            window_size=gauge("monitor_window_size_rows", "Rows per tumbling window."),
            reference_rows=gauge("monitor_reference_rows", "Rows of the current reference."),
            missing_features=gauge(
                "monitor_reference_missing_features",
                "1 for each model feature the reference sample lacks (not tested).",
                "feature",
            ),
            lag_seconds=gauge(
                "monitor_consumer_lag_seconds", "Age of the newest prediction when it was counted."
            ),
            state_discarded=counter(
                "ml_monitor_state_discarded_total",
                "Saved window states that could not be restored and were dropped, by reason.",
                "reason",
            ),
            validation_accuracy=gauge(
                "ml_model_validation_accuracy",
                "The champion's accuracy on its validation data (the drift reference's run).",
                "version",
            ),
            feedback=counter(
                "monitor_feedback_total",
                "Labelled outcomes counted into the rolling accuracy, by variant and version.",
                "variant",
                "version",
            ),
            model_failures=counter(
                "monitor_model_failures_total",
                "Times a model's events failed (its reference or state unusable); "
                "the other models' events went on.",
            ),
            model_loss=gauge(
                "ml_model_loss",
                "A regressor's rolling mean per-outcome loss (squared or absolute) from feedback.",
                "variant",
                "version",
            ),
            validation_loss=gauge(
                "ml_model_validation_loss",
                "A regressor's champion's mean loss on its validation data (rmse² or mae).",
                "version",
            ),
            reference_missing=gauge(
                "monitor_reference_missing",
                "1 while the champion version's reference sample is absent or unreadable: "
                "its data drift is not tested (concept drift still is).",
                "version",
            ),
        )

    def counted(self, model: str, counted: Counted, newest: datetime | None) -> None:
        """A batch counted into ``model``'s window, and the windows it closed."""
        for reason, count in counted.outcome.rejected.items():
            self.rejected_rows.labels(model, reason).inc(count)
        self.observations.labels(model).inc(counted.kept)
        self.window_fill.labels(model).set(counted.filled)
        if newest is not None:
            self.lag_seconds.labels(model).set((datetime.now(UTC) - newest).total_seconds())
        for verdict in counted.outcome.verdicts:
            for result in verdict.features:
                self.drift_score.labels(model, result.feature).set(result.statistic)
                self.drift_p_value.labels(model, result.feature).set(result.p_value)

    def reference_switched(
        self, model: str, reference: Reference, window_size: int, old: Reference | None
    ) -> None:
        """``model``'s window now tests against ``reference`` (``old`` before)."""
        if old is not None:
            for feature in old.missing:
                _forget(self.missing_features, model, feature)
            # The accuracy alert compares live accuracy with the champion's own validation.
            _forget(self.validation_accuracy, model, old.version)
            _forget(self.validation_loss, model, old.version)
            _forget(self.reference_missing, model, old.version)
        for feature in reference.missing:
            self.missing_features.labels(model, feature).set(1)
        self.reference_rows.labels(model).set(reference.size if reference.testable else 0)
        self.window_size.labels(model).set(window_size)
        if not reference.testable:
            self.reference_missing.labels(model, reference.version).set(1)
        if reference.baseline_accuracy is not None:
            self.validation_accuracy.labels(model, reference.version).set(
                reference.baseline_accuracy
            )
        if reference.baseline_loss is not None:
            self.validation_loss.labels(model, reference.version).set(reference.baseline_loss)


def _forget(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set: nothing to forget
        gauge.remove(*labels)
