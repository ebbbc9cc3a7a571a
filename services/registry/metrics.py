"""The registry's Prometheus collectors, built on a registry passed in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True)
class RegistryMetrics:
    """Versions approved or rejected, and how the latest candidate fared at each gate."""

    model_versions: Counter
    gate_passed: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RegistryMetrics:
        """Register the collectors on ``registry``."""
        return cls(
            model_versions=Counter(
                "flywheel_registry_model_versions_total",
                "Registered versions by outcome (approved, rejected).",
                ["outcome"],
                registry=registry,
            ),
            gate_passed=Gauge(
                "flywheel_registry_gate_passed",
                "1 when the latest candidate passed the gate, 0 when it failed.",
                ["gate"],
                registry=registry,
            ),
        )
