"""KS over the last few windows pooled: the slow path that finds small, lasting shifts."""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.monitor.core.ks import ks_critical_value


@dataclass
class PooledKS:
    """Two-sample KS of the last ``windows`` windows together against the reference.

    Each window adds, per feature, a histogram of where its values fall among
    the sorted reference values; the pooled histogram is a running sum, so a
    window costs O(n) per feature, not a sort of the pooled sample. Between two
    consecutive reference values the reference CDF is flat, so the largest gap
    there is at the ends of the pooled CDF's rise: the statistic is exact for
    continuous data and ignores ties in the reference. Looks overlap, so the
    level ``alpha`` bounds the false-alarm rate per look; the benchmark
    measures what it yields per million events.

    Examples
    --------
    >>> from scipy.stats import ks_2samp
    >>> rng = np.random.default_rng(0)
    >>> reference = np.sort(rng.normal(size=2000))
    >>> pooled = PooledKS([reference], windows=2, window_size=100, alpha=0.01)
    >>> first, second = rng.normal(0.2, size=(100, 1)), rng.normal(0.2, size=(100, 1))
    >>> pooled.add(first) is None
    True
    >>> d = pooled.add(second)[0]
    >>> expected = ks_2samp(reference, np.r_[first[:, 0], second[:, 0]]).statistic
    >>> bool(abs(d - expected) < 1e-12)
    True
    """

    sorted_references: Sequence[np.ndarray]
    windows: int
    window_size: int
    alpha: float
    _ring: deque[np.ndarray] = field(default_factory=deque)

    def __post_init__(self) -> None:
        rows = self.windows * self.window_size
        level = self.alpha / max(len(self.sorted_references), 1)
        self.thresholds = np.array(
            [ks_critical_value(level, r.size, rows) for r in self.sorted_references]
        )
        sizes = np.array([r.size for r in self.sorted_references])
        self._width = int(sizes.max()) + 1 if sizes.size else 1
        # Reference CDF per feature on the positions 0..max n; 1 past a shorter reference.
        positions = np.arange(self._width)
        self._reference_cdf = np.minimum(positions[None, :], sizes[:, None]) / sizes[:, None]
        self._equal_sizes = bool(sizes.size) and bool((sizes == sizes[0]).all())
        self._counts = np.zeros((len(self.sorted_references), self._width), dtype=np.int64)
        self._ring = deque(maxlen=self.windows)
        self._ranks: deque[np.ndarray] = deque(maxlen=self.windows)

    def add(self, window: np.ndarray, ranks: np.ndarray | None = None) -> np.ndarray | None:
        """Add one closed window (m × features); the pooled statistics once the ring is full.

        ``ranks`` (count of reference values ≤ each value, any row order) saves the
        binary searches when the caller has them already.
        """
        if len(self._ring) == self.windows:
            self._counts -= self._histogram(self._ranks[0])
        if ranks is None:
            ranks = np.column_stack(
                [
                    np.searchsorted(r, window[:, j], side="right")
                    for j, r in enumerate(self.sorted_references)
                ]
            )
        self._ring.append(np.array(window, dtype=float))
        self._ranks.append(ranks)
        self._counts += self._histogram(ranks)
        return self.statistics() if len(self._ring) == self.windows else None

    def statistics(self) -> np.ndarray:
        """KS statistic per feature of the pooled windows against the reference."""
        pooled_cdf = np.cumsum(self._counts, axis=1) / self.size
        if self._equal_sizes:
            # Just after reference value g the gap is d[g-1] + 1/n: one difference array
            # serves both ends of every flat stretch of the reference CDF.
            d = self._reference_cdf - pooled_cdf
            step = 1.0 / (self._width - 1)
            inner = d[:, :-1]
            ends = [d.max(axis=1), -d.min(axis=1), inner.max(axis=1) + step]
            ends.append(-(inner.min(axis=1) + step))
            result: np.ndarray = np.maximum.reduce(ends)
            return result
        before = np.zeros_like(pooled_cdf)
        before[:, 1:] = pooled_cdf[:, :-1]
        above = np.abs(self._reference_cdf - pooled_cdf).max(axis=1)
        below = np.abs(self._reference_cdf - before).max(axis=1)
        slow: np.ndarray = np.maximum(above, below)
        return slow

    def _histogram(self, ranks: np.ndarray) -> np.ndarray:
        # One bincount for all features: feature j's ranks are offset by j × width.
        features = ranks.shape[1]
        flat = (ranks + np.arange(features) * self._width).ravel()
        counts: np.ndarray = np.bincount(flat, minlength=features * self._width)
        return counts.reshape(features, self._width)

    @property
    def size(self) -> int:
        """Rows pooled right now."""
        return sum(w.shape[0] for w in self._ring)

    def chunks(self, last: int) -> list[dict[str, Any]]:
        """The last ``last`` windows of the ring, JSON-ready (floats as bytes)."""
        kept = list(self._ring)[max(len(self._ring) - last, 0) :]
        return [{"numbers": base64.b64encode(w.tobytes()).decode()} for w in kept]

    def restore(self, chunks: Sequence[Mapping[str, Any]]) -> None:
        """Refill the ring from ``chunks()`` saved over time (oldest first)."""
        width = len(self.sorted_references)
        for chunk in list(chunks)[-self.windows :]:
            numbers = np.frombuffer(base64.b64decode(chunk["numbers"]), dtype=float)
            self.add(numbers.reshape(-1, width))
