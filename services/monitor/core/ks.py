"""Data drift by two-sample Kolmogorov–Smirnov, per feature, over tumbling windows.

The reference sample is sorted once; a window is scored with binary searches
into it, so scoring costs O(m log n) for a window of m against n reference
values, and the statistic equals ``scipy.stats.ks_2samp`` exactly, ties included.
The decision uses a critical value precomputed per window size (Bonferroni
across features); the p-value is reported, not used on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import kstwo

from shared.events import FeatureDrift


def ks_statistic(sorted_reference: np.ndarray, window: np.ndarray) -> float:
    """Two-sample KS statistic of ``window`` against an already sorted reference.

    Examples
    --------
    >>> from scipy.stats import ks_2samp
    >>> rng = np.random.default_rng(0)
    >>> ref, win = rng.normal(size=500).round(1), rng.normal(0.3, size=80).round(1)
    >>> bool(ks_statistic(np.sort(ref), win) == ks_2samp(ref, win, method="asymp").statistic)
    True
    """
    n = sorted_reference.size
    w = np.sort(window)
    m = w.size
    # Empirical CDFs of both samples only change at sample points; between two
    # consecutive distinct window values the window CDF is flat, so the largest
    # gap there is at the ends: F_ref at the left point, and just below the right one.
    distinct_end = np.r_[w[1:] != w[:-1], True]
    values = w[distinct_end]
    f_win = (np.flatnonzero(distinct_end) + 1) / m
    ref_at = np.searchsorted(sorted_reference, values, side="right") / n
    ref_before = np.searchsorted(sorted_reference, values, side="left") / n
    f_win_before = np.r_[0.0, f_win[:-1]]
    gaps = np.concatenate([np.abs(ref_at - f_win), np.abs(ref_before - f_win_before)])
    return float(gaps.max())


def ks_p_value(statistic: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of a two-sample KS statistic (scipy's ``method="asymp"``)."""
    return float(kstwo.sf(statistic, _effective_size(n, m)))


def ks_critical_value(alpha: float, n: int, m: int) -> float:
    """The statistic above which the asymptotic test rejects at level ``alpha``."""
    return float(kstwo.isf(alpha, _effective_size(n, m)))


def _effective_size(n: int, m: int) -> int:
    # scipy's asymptotic two-sample test: the one-sample distribution at round(nm/(n+m)).
    return round(n * m / (n + m))


@dataclass(frozen=True)
class Reference:
    """A champion's training-feature sample, sorted once per numeric feature."""

    version: str
    sorted_values: Mapping[str, np.ndarray]

    @classmethod
    def from_columns(cls, version: str, columns: Mapping[str, ArrayLike]) -> Reference:
        """Build from raw columns (any order)."""
        return cls(version, {k: np.sort(np.asarray(v, dtype=float)) for k, v in columns.items()})

    @property
    def size(self) -> int:
        """Number of reference rows."""
        return min(v.size for v in self.sorted_values.values())


@dataclass(frozen=True)
class WindowVerdict:
    """One closed window: every feature's result, and whether it raises an alarm."""

    features: list[FeatureDrift]
    alarm: bool


@dataclass
class DriftDetector:
    """Tumbling windows of live feature values tested against a reference.

    Drift must persist for ``persistence`` consecutive windows before it is
    reported, and after a report the detector stays quiet for
    ``cooldown_windows`` windows, so one shift yields one alarm.
    """

    reference: Reference
    window_size: int = 1000
    alpha: float = 0.05
    persistence: int = 1
    cooldown_windows: int = 10
    _columns: dict[str, list[float]] = field(default_factory=dict)
    _filled: int = 0
    _streak: int = 0
    _quiet_for: int = 0

    def __post_init__(self) -> None:
        features = len(self.reference.sorted_values)
        n = self.reference.size
        self.threshold = ks_critical_value(self.alpha / features, n, self.window_size)
        self._columns = {name: [] for name in self.reference.sorted_values}

    def add(self, row: Mapping[str, float | str]) -> WindowVerdict | None:
        """Add one observation; return the verdict when it closes a window, else None."""
        for name, values in self._columns.items():
            values.append(float(row[name]))
        self._filled += 1
        if self._filled < self.window_size:
            return None
        self._filled = 0
        results = self._score_window()
        return WindowVerdict(results, self._should_alarm(results))

    def _score_window(self) -> list[FeatureDrift]:
        n, m = self.reference.size, self.window_size
        results = []
        for name, values in self._columns.items():
            statistic = ks_statistic(self.reference.sorted_values[name], np.asarray(values))
            results.append(
                FeatureDrift(
                    feature=name,
                    statistic=statistic,
                    p_value=ks_p_value(statistic, n, m),
                    threshold=self.threshold,
                    drifted=statistic > self.threshold,
                )
            )
            values.clear()
        return results

    def _should_alarm(self, results: list[FeatureDrift]) -> bool:
        drifted = any(r.drifted for r in results)
        self._streak = self._streak + 1 if drifted else 0
        if self._quiet_for > 0:
            self._quiet_for -= 1
            return False
        if self._streak >= self.persistence:
            self._streak = 0
            self._quiet_for = self.cooldown_windows
            return True
        return False
