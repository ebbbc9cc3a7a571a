"""A champion's training-feature sample, prepared once for drift tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from services.monitor.core.categorical import CategoricalReference


@dataclass(frozen=True)
class Reference:
    """Sorted numeric columns and categorical frequencies of one model version's sample."""

    version: str
    sorted_values: Mapping[str, np.ndarray]
    categorical: Mapping[str, CategoricalReference] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    """Features the model takes that the reference sample lacks (not tested)."""
    baseline_accuracy: float | None = None
    """The version's validation accuracy, the yardstick for concept drift."""

    @classmethod
    def from_columns(
        cls,
        version: str,
        columns: Mapping[str, ArrayLike],
        categorical: Mapping[str, ArrayLike] | None = None,
        missing: tuple[str, ...] = (),
        baseline_accuracy: float | None = None,
    ) -> Reference:
        """Build from raw columns (any order); non-finite reference values are dropped."""
        numeric = {}
        for name, values in columns.items():
            array = np.asarray(values, dtype=float)
            numeric[name] = np.sort(array[np.isfinite(array)])
        cats = {k: CategoricalReference.from_values(v) for k, v in (categorical or {}).items()}
        return cls(version, numeric, cats, missing, baseline_accuracy)

    @property
    def size(self) -> int:
        """Number of reference rows (the smallest column, if some had missing values)."""
        return min((v.size for v in self.sorted_values.values()), default=1)

    @property
    def feature_count(self) -> int:
        """How many features are tested."""
        return len(self.sorted_values) + len(self.categorical)
