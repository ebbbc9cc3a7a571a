"""Live rows checked against the features a reference tests, before they enter a window."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Row = Mapping[str, object]


def validate_rows(
    rows: Sequence[Row], numeric: Sequence[str], categorical: Sequence[str]
) -> tuple[np.ndarray, list[list[str]], list[int], Counter[str]]:
    """Numbers (n × numeric), labels per row and indices of the rows kept; rejections by reason.

    A row is rejected for a missing feature, a value of the wrong type (a number
    must be an int or float, a category a str) or a non-finite number.

    Examples
    --------
    >>> rows = [{"x": 1.0, "c": "a"}, {"x": float("nan"), "c": "a"}, {"c": "b"}, {"x": 2, "c": 3}]
    >>> numbers, labels, kept, rejected = validate_rows(rows, ["x"], ["c"])
    >>> numbers.tolist(), labels, kept, sorted(rejected.items())
    ([[1.0]], [['a']], [0], [('missing_feature', 1), ('non_finite', 1), ('wrong_type', 1)])
    """
    rejected: Counter[str] = Counter()
    numbers: list[list[Any]] = []
    labels: list[list[str]] = []
    kept: list[int] = []
    for i, row in enumerate(rows):
        try:
            values = [row[n] for n in numeric]
            cats = [row[c] for c in categorical]
        except KeyError:
            rejected["missing_feature"] += 1
            continue
        if not all(type(v) is float or type(v) is int for v in values) or not all(
            type(c) is str for c in cats
        ):
            rejected["wrong_type"] += 1
            continue
        numbers.append(values)
        labels.append(cats)  # type: ignore[arg-type]
        kept.append(i)
    matrix = np.array(numbers, dtype=float).reshape(len(numbers), len(numeric))
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        rejected["non_finite"] += int((~finite).sum())
        labels = [c for c, ok in zip(labels, finite, strict=True) if ok]
        kept = [i for i, ok in zip(kept, finite, strict=True) if ok]
        matrix = matrix[finite]
    return matrix, labels, kept, rejected
