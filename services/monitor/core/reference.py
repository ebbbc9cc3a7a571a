"""A champion's training-feature sample, prepared once for drift tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import chi2

#: Pseudo-count of "a category the reference never saw", so unseen values are testable.
UNSEEN_PSEUDO_COUNT = 0.5


@dataclass(frozen=True)
class CategoricalReference:
    """Reference frequencies of one categorical feature, with a bucket for unseen categories."""

    categories: tuple[str, ...]
    probabilities: np.ndarray
    """One probability per category, then one for unseen categories; they sum to one."""

    @classmethod
    def from_values(cls, values: ArrayLike) -> CategoricalReference:
        """Count categories in the reference column (missing values are ignored)."""
        column = [str(v) for v in np.asarray(values, dtype=object) if v is not None and v == v]
        names, counts = np.unique(np.asarray(column, dtype=str), return_counts=True)
        total = counts.sum() + UNSEEN_PSEUDO_COUNT
        probabilities = np.r_[counts, UNSEEN_PSEUDO_COUNT] / total
        return cls(tuple(str(n) for n in names), probabilities)

    def counts(self, window: list[str]) -> np.ndarray:
        """Observed counts per category of ``window``; the last entry counts unseen values."""
        index = {name: i for i, name in enumerate(self.categories)}
        unseen = len(self.categories)
        observed = np.zeros(unseen + 1)
        np.add.at(observed, [index.get(v, unseen) for v in window], 1)
        return observed

    def chi2(self, window: list[str]) -> tuple[float, float, int]:
        """Pearson χ² of the window against the reference: statistic, p-value, unseen count."""
        observed = self.counts(window)
        expected = self.probabilities * observed.sum()
        statistic = float(((observed - expected) ** 2 / expected).sum())
        return statistic, float(chi2.sf(statistic, self.degrees_of_freedom)), int(observed[-1])

    @property
    def degrees_of_freedom(self) -> int:
        """Buckets minus one (the unseen bucket included)."""
        return len(self.categories)


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
