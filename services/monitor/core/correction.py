"""Multiple-testing correction across the features of one window."""

from __future__ import annotations

from typing import Literal

import numpy as np

Correction = Literal["bonferroni", "bh"]


def rejections(p_values: np.ndarray, alpha: float, correction: Correction) -> np.ndarray:
    """Which hypotheses are rejected: Bonferroni (family-wise) or Benjamini–Hochberg (FDR).

    Examples
    --------
    >>> p = np.array([0.001, 0.02, 0.03, 0.5])
    >>> rejections(p, 0.05, "bonferroni").tolist()
    [True, False, False, False]
    >>> rejections(p, 0.05, "bh").tolist()
    [True, True, True, False]
    """
    k = p_values.size
    if correction == "bonferroni":
        result: np.ndarray = p_values <= alpha / k
        return result
    order = np.argsort(p_values, kind="stable")
    below = p_values[order] <= alpha * np.arange(1, k + 1) / k
    rejected = np.zeros(k, dtype=bool)
    if below.any():
        last = int(np.flatnonzero(below).max())
        rejected[order[: last + 1]] = True
    return rejected
