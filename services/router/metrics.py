"""Prometheus collectors of the router."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True)
class RouterMetrics:
    """Experiments opened and the challenger's current share."""

    experiments_opened: Counter
    experiment_updates: Counter
    challenger_share: Gauge

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
        )
