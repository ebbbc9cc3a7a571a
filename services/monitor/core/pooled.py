"""KS over the last few windows pooled: the slow path that finds small, lasting shifts."""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.monitor.core.ks import ks_critical_value, reference_ranks


@dataclass
class PooledKS:
    """Two-sample KS of the last ``windows`` windows together against the reference.

    Each window adds, per feature, two histograms of where its values fall among
    the sorted reference values: by the count of reference values below each
    value (``side="left"``) and by the count at or below it (``side="right"``).
    The pooled histograms are running sums, so a window costs O(n) per feature,
    not a sort of the pooled sample. With ``L(p)`` and ``R(p)`` the pooled rows
    whose left and right counts are at most ``p``, the statistic is the larger
    of ``max R(p)/N − p/n`` (the pooled CDF above) and ``max (p+1)/n − L(p)/N``
    (the reference CDF above). A run of equal reference values has no left count
    inside it, so ``L`` is flat across the run and the second term is largest at
    the run's end: the reference CDF jumps over the whole run, as scipy's does.
    The result equals ``ks_2samp(..., method="asymp").statistic`` bit for bit,
    ties included. Looks overlap, so the level ``alpha`` bounds the false-alarm
    rate per look; the benchmark measures what it yields per million events.

    Examples
    --------
    >>> from scipy.stats import ks_2samp
    >>> rng = np.random.default_rng(0)
    >>> reference = np.sort(rng.integers(0, 5, size=2000).astype(float))  # five levels
    >>> pooled = PooledKS([reference], windows=2, window_size=100, alpha=0.01)
    >>> first = rng.integers(0, 5, size=(100, 1)).astype(float)
    >>> second = rng.integers(0, 5, size=(100, 1)).astype(float)
    >>> pooled.add(first) is None
    True
    >>> d = pooled.add(second)[0]
    >>> bool(d == ks_2samp(reference, np.r_[first[:, 0], second[:, 0]], method="asymp").statistic)
    True
    """

    sorted_references: Sequence[np.ndarray]
    windows: int
    window_size: int
    alpha: float
    features: int = 0
    """Features sharing ``alpha`` (Bonferroni); 0 means the numeric ones alone."""
    _ring: deque[np.ndarray] = field(default_factory=deque)

    def __post_init__(self) -> None:
        rows = self.windows * self.window_size
        level = self.alpha / max(self.features or len(self.sorted_references), 1)
        self.thresholds = np.array(
            [ks_critical_value(level, r.size, rows) for r in self.sorted_references]
        )
        sizes = np.array([r.size for r in self.sorted_references])
        self._width = int(sizes.max()) + 1 if sizes.size else 1
        # Reference counts p = 0..max n per feature, capped at a shorter reference's size.
        positions = np.arange(self._width)
        self._at = np.minimum(positions[None, :], sizes[:, None])
        self._after = np.minimum(positions[None, :] + 1, sizes[:, None])
        self._sizes = sizes[:, None]
        features = len(self.sorted_references)
        self._left = np.zeros((features, self._width), dtype=np.int64)
        self._right = np.zeros((features, self._width), dtype=np.int64)
        self._ring = deque(maxlen=self.windows)
        self._ranks: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=self.windows)

    def add(
        self, window: np.ndarray, ranks: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray | None:
        """Add one closed window (m × features); the pooled statistics once the ring is full.

        ``ranks`` (left and right counts of reference values, m × features, any row
        order, as ``reference_ranks`` gives them) saves the binary searches when the
        caller has them already.
        """
        if len(self._ring) == self.windows:
            old_left, old_right = self._ranks[0]
            self._left -= self._histogram(old_left)
            self._right -= self._histogram(old_right)
        left, right = (
            ranks if ranks is not None else reference_ranks(self.sorted_references, window)
        )
        self._ring.append(np.array(window, dtype=float))
        self._ranks.append((left, right))
        self._left += self._histogram(left)
        self._right += self._histogram(right)
        return self.statistics() if len(self._ring) == self.windows else None

    def statistics(self) -> np.ndarray:
        """KS statistic per feature of the pooled windows against the reference."""
        size = self.size
        # The same divisions and subtractions as scipy, so the results agree bit for bit.
        pooled_above = np.cumsum(self._right, axis=1) / size - self._at / self._sizes
        reference_above = self._after / self._sizes - np.cumsum(self._left, axis=1) / size
        result: np.ndarray = np.maximum(pooled_above.max(axis=1), reference_above.max(axis=1))
        return result

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
