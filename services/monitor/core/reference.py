"""A champion's training-feature sample, prepared once for drift tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from services.monitor.core.categorical import CategoricalReference
from shared.spec import RegressionLoss

#: The window column holding the model's answer, tested against the reference's
#: ``prediction`` column (a regressor's values by KS, a classifier's classes by χ²).
PREDICTION = "prediction"


@dataclass(frozen=True)
class Reference:
    """Sorted numeric columns and categorical frequencies of one model version's sample.

    A version whose sample is absent or unreadable still has a reference: no
    columns, ``unavailable`` saying why, and its validation baselines, so concept
    drift is still watched from feedback.
    """

    version: str
    sorted_values: Mapping[str, np.ndarray]
    categorical: Mapping[str, CategoricalReference] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    """Features the model takes that the reference sample lacks (not tested)."""
    baseline_accuracy: float | None = None
    """The version's validation accuracy, the yardstick for a classifier's concept drift."""
    baseline_loss: float | None = None
    """The version's validation mean loss, the yardstick for a regressor's concept drift."""
    loss: RegressionLoss = "squared"
    """How a regressor's outcome is scored (the spec's ``loss``)."""
    unavailable: str | None = None
    """Why the version's feature sample cannot be tested (absent, unreadable); None when it can."""

    @classmethod
    def from_columns(
        cls,
        version: str,
        columns: Mapping[str, ArrayLike],
        categorical: Mapping[str, ArrayLike] | None = None,
        missing: tuple[str, ...] = (),
        baseline_accuracy: float | None = None,
        baseline_loss: float | None = None,
        loss: RegressionLoss = "squared",
    ) -> Reference:
        """Build from raw columns (any order); non-finite reference values are dropped."""
        numeric = {}
        for name, values in columns.items():
            array = np.asarray(values, dtype=float)
            numeric[name] = np.sort(array[np.isfinite(array)])
        cats = {k: CategoricalReference.from_values(v) for k, v in (categorical or {}).items()}
        return cls(version, numeric, cats, missing, baseline_accuracy, baseline_loss, loss)

    @classmethod
    def without_sample(
        cls,
        version: str,
        why: str,
        baseline_accuracy: float | None = None,
        baseline_loss: float | None = None,
        loss: RegressionLoss = "squared",
    ) -> Reference:
        """A version whose feature sample cannot be tested, because ``why``."""
        return cls(version, {}, {}, (), baseline_accuracy, baseline_loss, loss, why)

    @property
    def testable(self) -> bool:
        """Whether live rows can be tested against this sample."""
        return self.unavailable is None and self.feature_count > 0

    @property
    def tests_predictions(self) -> bool:
        """Whether the sample holds the model's answers (drift of the prediction distribution)."""
        return PREDICTION in self.sorted_values or PREDICTION in self.categorical

    @property
    def size(self) -> int:
        """Number of reference rows (the smallest column, if some had missing values)."""
        return min((v.size for v in self.sorted_values.values()), default=1)

    @property
    def feature_count(self) -> int:
        """How many features are tested."""
        return len(self.sorted_values) + len(self.categorical)
