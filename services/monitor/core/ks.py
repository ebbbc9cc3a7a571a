"""Two-sample Kolmogorov–Smirnov against a reference sorted once.

A window is scored with binary searches into the sorted reference, so scoring
costs O(m log n) for a window of m against n reference values, and the
statistic equals ``scipy.stats.ks_2samp(..., method="asymp")`` exactly, ties
included. All features of a window are scored together: one 2-D sort, two
binary searches per feature, and the gaps computed as one array expression.
The decision uses a critical value precomputed per window size; p-values are
computed once per closed window, for the report, never per event.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import kstwo


def ks_statistics(sorted_references: Sequence[np.ndarray], window: np.ndarray) -> np.ndarray:
    """KS statistic of each column of ``window`` (m × k) against its sorted reference.

    With the window column sorted, the largest gap above is ``left/n − i/m`` at
    each value and the largest gap below is ``(i+1)/m − right/n``; ties in the
    window are covered by the first and last index of each run of equal values.

    Examples
    --------
    >>> from scipy.stats import ks_2samp
    >>> rng = np.random.default_rng(0)
    >>> ref = rng.normal(size=(500, 2)).round(1)
    >>> win = rng.normal(0.3, size=(80, 2)).round(1)
    >>> d = ks_statistics([np.sort(ref[:, 0]), np.sort(ref[:, 1])], win)
    >>> [bool(d[j] == ks_2samp(ref[:, j], win[:, j], method="asymp").statistic) for j in (0, 1)]
    [True, True]
    """
    return ks_statistics_and_ranks(sorted_references, window)[0]


def ks_statistics_and_ranks(
    sorted_references: Sequence[np.ndarray], window: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``ks_statistics``, and each window value's counts of reference values < and ≤ it.

    The counts (m × k each, rows in sorted order per column) are what the pooled
    test histograms, so a window's binary searches serve both tests.
    """
    w = np.sort(window, axis=0)
    left, right = _searches(sorted_references, w)
    m = w.shape[0]
    sizes = np.array([r.size for r in sorted_references], dtype=float)
    index = np.arange(m, dtype=float)[:, None]
    # Same divisions and subtractions as scipy, so the results agree bit for bit.
    above = (left / sizes - index / m).max(axis=0)
    below = ((index + 1) / m - right / sizes).max(axis=0)
    return np.maximum(above, below), (left, right)


def reference_ranks(
    sorted_references: Sequence[np.ndarray], window: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of reference values strictly below and at or below each window value (m × k).

    Examples
    --------
    >>> left, right = reference_ranks([np.array([1.0, 2.0, 2.0, 3.0])], np.array([[2.0], [2.5]]))
    >>> left[:, 0].tolist(), right[:, 0].tolist()
    ([1, 3], [3, 3])
    """
    return _searches(sorted_references, np.asarray(window, dtype=float))


def _searches(
    sorted_references: Sequence[np.ndarray], window: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    m, k = window.shape
    left = np.empty((m, k), dtype=np.int64)
    right = np.empty((m, k), dtype=np.int64)
    for j, reference in enumerate(sorted_references):
        left[:, j] = np.searchsorted(reference, window[:, j], side="left")
        right[:, j] = np.searchsorted(reference, window[:, j], side="right")
    return left, right


def ks_statistic(sorted_reference: np.ndarray, window: np.ndarray) -> float:
    """KS statistic of one window column against an already sorted reference.

    Examples
    --------
    >>> from scipy.stats import ks_2samp
    >>> rng = np.random.default_rng(0)
    >>> ref, win = rng.normal(size=500).round(1), rng.normal(0.3, size=80).round(1)
    >>> bool(ks_statistic(np.sort(ref), win) == ks_2samp(ref, win, method="asymp").statistic)
    True
    """
    return float(ks_statistics([sorted_reference], np.asarray(window, dtype=float)[:, None])[0])


def ks_p_value(statistic: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of a two-sample KS statistic (scipy's ``method="asymp"``)."""
    return float(kstwo.sf(statistic, _effective_size(n, m)))


def ks_p_values(statistics: np.ndarray, sizes: Sequence[int], m: int) -> np.ndarray:
    """p-values of several statistics, one scipy call per distinct reference size."""
    result = np.empty(len(sizes))
    effective = np.array([_effective_size(n, m) for n in sizes])
    for size in np.unique(effective):
        chosen = effective == size
        result[chosen] = kstwo.sf(statistics[chosen], size)
    return result


def ks_critical_value(alpha: float, n: int, m: int) -> float:
    """The statistic above which the asymptotic test rejects at level ``alpha``."""
    return float(kstwo.isf(alpha, _effective_size(n, m)))


def _effective_size(n: int, m: int) -> int:
    # scipy's asymptotic two-sample test: the one-sample distribution at round(nm/(n+m)).
    return round(n * m / (n + m))
