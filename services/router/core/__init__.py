"""The router's pure core: experiment lifecycle, A/B statistics and the decision at each look."""

from services.router.core.experiment import (
    Experiment,
    decide_on_approval,
    experiment_id_for,
    is_newer,
)
from shared.events import ExperimentStatus

__all__ = [
    "Experiment",
    "ExperimentStatus",
    "decide_on_approval",
    "experiment_id_for",
    "is_newer",
]
