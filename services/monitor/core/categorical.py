"""Categorical drift that scales with the number of categories.

A categorical feature is tested three ways, each at a third of the feature's
level (Bonferroni within the feature):

- **Shares, χ² of homogeneity** between the reference counts and the window
  counts (a 2 × cells table, df = cells − 1). Both samples are noisy, so the
  test is between two samples, not of the window against reference shares
  taken as exact. Categories whose expected window count (reference share ×
  window size) is below ``MIN_EXPECTED`` are merged into one "other" cell, so
  no cell is too small for the χ² approximation however many categories there
  are; if "other" is still too small, the smallest kept categories join it.
- **New categories**, one-sided: are values the reference never saw more
  frequent than the reference predicts? A reference row is "new" to the rest
  of the reference exactly when its category occurs once (leave-one-out), so
  the reference's own rate of new categories is Good–Turing's ``n1 / N``
  (singletons over rows). The window's unseen count ``u`` of ``W`` and the
  reference's ``n1`` of ``N`` are compared as two Poisson counts with the
  exact conditional test: ``u`` given ``n1 + u`` is Binomial with ``p = W / (N +
  W)``. A reference without singletons still gives a finite rate, so one or two
  unseen values do not alarm.

Unseen values also count in the window's "other" cell: the reference's "other"
cell holds its rare categories, singletons included, which are the same tail
of the distribution, so the shares stay comparable. (Leaving unseen values out
of the χ² would make every kept category look more frequent by ``1 / (1 − M)``,
``M`` the missing mass: a false alarm on every window when ``M`` is a few %.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binom, chi2, norm

#: Smallest expected window count of a χ² cell; rarer categories are merged into "other".
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class CategoricalResult:
    """One window's categorical test: χ² statistic, combined p-value and both parts."""

    statistic: float
    p_value: float
    """Bonferroni within the feature: 3 × the smallest of the three p-values, at most 1."""
    unseen: int
    shares_p_value: float
    cell_p_value: float
    unseen_p_value: float


@dataclass(frozen=True)
class WindowCounts:
    """A window's values counted into a table's cells; counts of windows add up."""

    observed: np.ndarray
    unseen: int

    def __add__(self, other: WindowCounts) -> WindowCounts:
        return WindowCounts(self.observed + other.observed, self.unseen + other.unseen)


@dataclass(frozen=True)
class CategoryTable:
    """The cells of one categorical feature for a given window size, built once.

    Examples
    --------
    >>> from scipy.stats import chi2_contingency
    >>> reference = CategoricalReference.from_values(["a"] * 600 + ["b"] * 390 + ["c"] * 10)
    >>> table = reference.table(window_size=100)  # "c" expects 1 per window: into "other"
    >>> table.degrees_of_freedom
    1
    >>> window = ["a"] * 50 + ["b"] * 45 + ["c"] * 3 + ["new"] * 2
    >>> result = table.test(window)
    >>> expected = chi2_contingency([[600, 400], [50, 50]], correction=False)
    >>> bool(np.isclose(result.statistic, expected.statistic)), result.unseen
    (True, 2)
    """

    cell_of: dict[str, int]
    """Kept categories and their cell; every other value goes to the last cell."""
    reference_counts: np.ndarray
    singletons: int
    window_size: int
    seen: frozenset[str]
    """Every category of the reference, kept or merged."""

    def test(self, window: Sequence[str]) -> CategoricalResult:
        """The three tests of one window's values."""
        return self.test_counts(self.count(window))

    def count(self, window: Sequence[str]) -> WindowCounts:
        """The window's values in the table's cells, and how many the reference never saw."""
        other = self.reference_counts.size - 1
        cells = np.array([self.cell_of.get(v, other) for v in window], dtype=np.int64)
        observed = np.bincount(cells, minlength=self.reference_counts.size).astype(float)
        return WindowCounts(observed, sum(v not in self.seen for v in window))

    def test_counts(self, counts: WindowCounts) -> CategoricalResult:
        """The three tests of counted values (one window, or several added up)."""
        observed, unseen = counts.observed, counts.unseen
        statistic = self._homogeneity(observed)
        shares_p = float(chi2.sf(statistic, self.degrees_of_freedom)) if self.cells > 1 else 1.0
        cell_p = self._cell_p_value(observed)
        unseen_p = self._unseen_p_value(unseen, int(observed.sum()))
        combined = min(1.0, 3 * min(shares_p, cell_p, unseen_p))
        return CategoricalResult(statistic, combined, unseen, shares_p, cell_p, unseen_p)

    def critical_value(self, level: float) -> float:
        """The χ² statistic above which the shares test alone rejects at ``level``."""
        return float(chi2.isf(level / 3, max(self.degrees_of_freedom, 1)))

    @property
    def cells(self) -> int:
        """Cells of the χ² table, "other" included."""
        return int((self.reference_counts > 0).sum())

    @property
    def degrees_of_freedom(self) -> int:
        """Cells minus one (0 when everything is one cell: the shares test is then void)."""
        return max(self.cells - 1, 0)

    def _homogeneity(self, observed: np.ndarray) -> float:
        if self.cells < 2 or observed.sum() == 0:
            return 0.0
        r, w = self.reference_counts, observed
        n, m = r.sum(), w.sum()
        both = r + w
        used = both > 0
        return float(n * m * ((r[used] / n - w[used] / m) ** 2 / both[used]).sum())

    def _cell_p_value(self, observed: np.ndarray) -> float:
        """Two-sided p of the largest adjusted residual, times the number of cells."""
        r, w = self.reference_counts, observed
        n, m = r.sum(), w.sum()
        if self.cells < 2 or m == 0:
            return 1.0
        both = r + w
        used = both > 0
        expected = m * both[used] / (n + m)
        spread = expected * (n / (n + m)) * (1 - both[used] / (n + m))
        largest = float(np.max(np.abs(w[used] - expected) / np.sqrt(spread)))
        return min(1.0, self.cells * 2 * float(norm.sf(largest)))

    def _unseen_p_value(self, unseen: int, size: int) -> float:
        if unseen == 0:
            return 1.0
        n = float(self.reference_counts.sum())
        share = size / (n + size)
        return float(binom.sf(unseen - 1, self.singletons + unseen, share))


@dataclass(frozen=True)
class CategoricalReference:
    """Reference counts of one categorical feature (missing values ignored)."""

    categories: tuple[str, ...]
    counts: np.ndarray

    @classmethod
    def from_values(cls, values: ArrayLike) -> CategoricalReference:
        """Count categories in the reference column (missing values are ignored)."""
        column = [str(v) for v in np.asarray(values, dtype=object) if v is not None and v == v]
        names, counts = np.unique(np.asarray(column, dtype=str), return_counts=True)
        return cls(tuple(str(n) for n in names), counts.astype(np.int64))

    @property
    def size(self) -> int:
        """Reference rows with a value."""
        return int(self.counts.sum())

    @property
    def singletons(self) -> int:
        """Categories seen exactly once: Good–Turing's count of "new" reference rows."""
        return int((self.counts == 1).sum())

    def table(self, window_size: int, min_expected: float = MIN_EXPECTED) -> CategoryTable:
        """Cells for windows of ``window_size``: rare categories merged into "other"."""
        size = max(self.size, 1)
        order = np.argsort(-self.counts, kind="stable")
        expected = self.counts[order] * window_size / size
        kept = int((expected >= min_expected).sum())
        # "other" gathers the tail; while it is too small, the smallest kept category joins it.
        while kept > 0 and expected[kept:].sum() < min_expected:
            kept -= 1
        cell_of = {self.categories[i]: c for c, i in enumerate(order[:kept])}
        counts = np.r_[self.counts[order[:kept]], self.counts[order[kept:]].sum()]
        return CategoryTable(
            cell_of, counts.astype(float), self.singletons, window_size, frozenset(self.categories)
        )


@dataclass
class PooledCategories:
    """The categorical half of the pooled test: cell counts of the last ``windows`` windows.

    Counts add up, so a look costs one sum per feature; the three tests then run
    on the pooled counts at ``level`` (a small lasting change of shares, which no
    single window shows, as ``PooledKS`` does for numbers).
    """

    tables: Sequence[CategoryTable]
    windows: int
    level: float
    _ring: deque[list[WindowCounts]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._ring = deque(maxlen=self.windows)
        self.thresholds = [table.critical_value(self.level) for table in self.tables]

    def add(self, counts: list[WindowCounts]) -> list[CategoricalResult] | None:
        """Add one closed window's counts; the pooled results once the ring is full."""
        self._ring.append(counts)
        if len(self._ring) < self.windows:
            return None
        pooled = [sum(column[1:], column[0]) for column in zip(*self._ring, strict=True)]
        return [table.test_counts(c) for table, c in zip(self.tables, pooled, strict=True)]

    def chunks(self, last: int) -> list[dict[str, Any]]:
        """The last ``last`` windows' counts, JSON-ready (one chunk per window)."""
        kept = list(self._ring)[max(len(self._ring) - last, 0) :]
        return [{"categories": [[*c.observed.tolist(), c.unseen] for c in w]} for w in kept]

    def restore(self, chunks: Sequence[Mapping[str, Any]]) -> None:
        """Refill the ring from saved chunks (oldest first); chunks without counts are skipped."""
        for chunk in [c for c in chunks if "categories" in c][-self.windows :]:
            saved = chunk["categories"]
            self._ring.append(
                [WindowCounts(np.array(c[:-1], dtype=float), int(c[-1])) for c in saved]
            )
