"""The monitor's Prometheus collectors."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True)
class MonitorMetrics:
    """Drift scores, p-values and alarms."""

    drift_score: Gauge
    drift_p_value: Gauge
    drift_events: Counter
    observations: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> MonitorMetrics:
        """Register the collectors on ``registry``."""
        return cls(
            drift_score=Gauge(
                "ml_data_drift_score", "Last window's KS statistic.", ["feature"], registry=registry
            ),
            drift_p_value=Gauge(
                "ml_drift_p_value", "Last window's KS p-value.", ["feature"], registry=registry
            ),
            drift_events=Counter(
                "ml_drift_events_total",
                "drift-detected events published.",
                ["kind"],
                registry=registry,
            ),
            observations=Counter(
                "monitor_observations_total",
                "Predictions added to drift windows.",
                registry=registry,
            ),
        )
