"""The monitor's pure logic: drift statistics, windows and alarm policy, concept drift
(a classifier's accuracy, a regressor's loss), and each model's state (dedupe, save
and restore, reference refresh)."""

from services.monitor.core.categorical import (
    CategoricalReference,
    CategoricalResult,
    CategoryTable,
)
from services.monitor.core.concept import AccuracyCusum, ConceptVerdict
from services.monitor.core.config import DriftConfig
from services.monitor.core.correction import Correction, rejections
from services.monitor.core.ks import (
    ks_critical_value,
    ks_p_value,
    ks_p_values,
    ks_statistic,
    ks_statistics,
)
from services.monitor.core.loss import LossCusum, LossVerdict, baseline_loss, outcome_loss
from services.monitor.core.model_drift import (
    UNRESTORABLE,
    Counted,
    Judged,
    ModelDrift,
    Save,
    SavedState,
)
from services.monitor.core.reference import PREDICTION, Reference
from services.monitor.core.refresh import Hold, ReferenceRefresh
from services.monitor.core.window import DriftDetector, WindowMark, WindowVerdict

__all__ = [
    "PREDICTION",
    "UNRESTORABLE",
    "AccuracyCusum",
    "CategoricalReference",
    "CategoricalResult",
    "CategoryTable",
    "ConceptVerdict",
    "Correction",
    "Counted",
    "DriftConfig",
    "DriftDetector",
    "Hold",
    "Judged",
    "LossCusum",
    "LossVerdict",
    "ModelDrift",
    "Reference",
    "ReferenceRefresh",
    "Save",
    "SavedState",
    "WindowMark",
    "WindowVerdict",
    "baseline_loss",
    "ks_critical_value",
    "ks_p_value",
    "ks_p_values",
    "ks_statistic",
    "ks_statistics",
    "outcome_loss",
    "rejections",
]
