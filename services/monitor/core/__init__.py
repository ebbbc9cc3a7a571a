"""The monitor's pure logic: drift statistics, windows and alarm policy, concept drift."""

from services.monitor.core.categorical import (
    CategoricalReference,
    CategoricalResult,
    CategoryTable,
)
from services.monitor.core.concept import AccuracyCusum, ConceptVerdict
from services.monitor.core.correction import Correction, rejections
from services.monitor.core.ks import (
    ks_critical_value,
    ks_p_value,
    ks_p_values,
    ks_statistic,
    ks_statistics,
)
from services.monitor.core.reference import Reference
from services.monitor.core.window import DriftDetector, WindowMark, WindowVerdict

__all__ = [
    "AccuracyCusum",
    "CategoricalReference",
    "CategoricalResult",
    "CategoryTable",
    "ConceptVerdict",
    "Correction",
    "DriftDetector",
    "Reference",
    "WindowMark",
    "WindowVerdict",
    "ks_critical_value",
    "ks_p_value",
    "ks_p_values",
    "ks_statistic",
    "ks_statistics",
    "rejections",
]
