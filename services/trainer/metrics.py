"""The trainer's Prometheus collectors, built on a registry passed in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class TrainerMetrics:
    """How many trainings of each model ran, why, how they ended and how long they took."""

    trainings: Counter
    training_seconds: Histogram
    triggers: Counter
    coalesced: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TrainerMetrics:
        """Register the collectors on ``registry``."""
        return cls(
            trainings=Counter(
                "flywheel_trainer_trainings_total",
                "Trainings by model, trigger and outcome (succeeded, failed, deferred: an outage).",
                ["model_name", "trigger", "outcome"],
                registry=registry,
            ),
            training_seconds=Histogram(
                "flywheel_trainer_training_duration_seconds",
                "Time to load batches, fit, evaluate and log one model.",
                ["model_name", "trigger"],
                buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
                registry=registry,
            ),
            triggers=Counter(
                "flywheel_trainer_triggers_total",
                "Triggers by model, kind and outcome (accepted, duplicate batch).",
                ["model_name", "trigger", "outcome"],
                registry=registry,
            ),
            coalesced=Counter(
                "flywheel_trainer_coalesced_triggers_total",
                "Data-arrived events folded into another event's training (burst coalescing).",
                ["model_name"],
                registry=registry,
            ),
        )
