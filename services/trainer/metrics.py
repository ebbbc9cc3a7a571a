"""The trainer's Prometheus collectors, built on a registry passed in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class TrainerMetrics:
    """How many trainings ran, why, how they ended and how long they took."""

    trainings: Counter
    training_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TrainerMetrics:
        """Register the collectors on ``registry``."""
        return cls(
            trainings=Counter(
                "flywheel_trainer_trainings_total",
                "Trainings by trigger (data, drift) and outcome (succeeded, failed).",
                ["trigger", "outcome"],
                registry=registry,
            ),
            training_seconds=Histogram(
                "flywheel_trainer_training_duration_seconds",
                "Time to load batches, fit, evaluate and log one model.",
                ["trigger"],
                buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
                registry=registry,
            ),
        )
