"""The monitor's Prometheus collectors."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True)
class MonitorMetrics:
    """Drift scores, p-values, alarms, accuracy, windows and lag."""

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

    @classmethod
    def create(cls, registry: CollectorRegistry) -> MonitorMetrics:
        """Register the collectors on ``registry``."""

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=registry)

        return cls(
            drift_score=gauge("ml_data_drift_score", "Last window's statistic.", ("feature",)),
            drift_p_value=gauge("ml_drift_p_value", "Last window's p-value.", ("feature",)),
            drift_events=counter("ml_drift_events_total", "drift-detected published.", ("kind",)),
            drift_suppressed=counter(
                "ml_drift_suppressed_total",
                "Drift alarms not published because an experiment was already running.",
                ("kind",),
            ),
            observations=counter("monitor_observations_total", "Rows added to drift windows."),
            rejected_rows=counter(
                "monitor_rejected_rows_total", "Rows left out of windows, by reason.", ("reason",)
            ),
            model_accuracy=gauge(
                "ml_model_accuracy", "Rolling accuracy from feedback.", ("variant", "version")
            ),
            window_fill=gauge("monitor_window_fill_rows", "Rows in the open window."),
            window_size=gauge("monitor_window_size_rows", "Rows per tumbling window."),
            reference_rows=gauge("monitor_reference_rows", "Rows of the current reference."),
            missing_features=gauge(
                "monitor_reference_missing_features",
                "1 for each model feature the reference sample lacks (not tested).",
                ("feature",),
            ),
            lag_seconds=gauge(
                "monitor_consumer_lag_seconds", "Age of the newest prediction when it was counted."
            ),
            state_discarded=counter(
                "ml_monitor_state_discarded_total",
                "Saved window states that could not be restored and were dropped, by reason.",
                ("reason",),
            ),
            validation_accuracy=gauge(
                "ml_model_validation_accuracy",
                "The champion's accuracy on its validation data (the drift reference's run).",
                ("model_name", "version"),
            ),
            feedback=counter(
                "monitor_feedback_total",
                "Labelled outcomes counted into the rolling accuracy, by variant and version.",
                ("variant", "version"),
            ),
        )
