"""Prometheus collectors of the router."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.router.core import Experiment


@dataclass(frozen=True)
class RouterMetrics:
    """Experiments opened, state changes, looks, outcomes and the challenger's share, per model."""

    experiments_opened: Counter
    experiment_updates: Counter
    challenger_share: Gauge
    looks: Counter
    outcomes: Counter
    look_failures: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RouterMetrics:
        """Register the collectors on ``registry``."""
        return cls(
            experiments_opened=Counter(
                "experiments_opened_total",
                "Experiments opened (a challenger started receiving traffic).",
                ["model_name"],
                registry=registry,
            ),
            experiment_updates=Counter(
                "experiment_updates_total",
                "Routing-table changes published, by status.",
                ["model_name", "status"],
                registry=registry,
            ),
            challenger_share=Gauge(
                "challenger_share",
                "Share of traffic currently routed to the challenger.",
                ["model_name"],
                registry=registry,
            ),
            looks=Counter(
                "experiment_looks_total",
                "Looks at running experiments, by the decision they reached.",
                ["model_name", "decision"],
                registry=registry,
            ),
            outcomes=Counter(
                "experiment_outcomes_total",
                "Feedback events: counted for an experiment, duplicate, or outside any.",
                ["model_name", "counted"],
                registry=registry,
            ),
            look_failures=Counter(
                "experiment_look_failures_total",
                "Looks that failed (Redis, MLflow or the publisher away); the next tick retries.",
                ["model_name"],
                registry=registry,
            ),
        )

    def record(self, state: Experiment) -> None:
        """Count one published state and set the share gauge."""
        labels = {"model_name": state.model_name}
        self.experiment_updates.labels(status=state.status, **labels).inc()
        self.challenger_share.labels(**labels).set(state.challenger_share)
        if state.status == "running" and state.looks == 0:
            self.experiments_opened.labels(**labels).inc()
