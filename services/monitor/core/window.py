"""Tumbling windows of live feature values, tested against a reference, with alarm hysteresis."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from services.monitor.core.categorical import PooledCategories, WindowCounts
from services.monitor.core.correction import Correction, rejections
from services.monitor.core.ks import ks_critical_value, ks_p_values, ks_statistics_and_ranks
from services.monitor.core.pooled import PooledKS
from services.monitor.core.reference import Reference
from services.monitor.core.rows import Row, validate_rows
from shared.events import FeatureDrift


class WindowMark(NamedTuple):
    """Where a window starts or ends in the stream: time, event and correlation ids."""

    at: str
    event_id: str
    correlation_id: str


@dataclass(frozen=True)
class WindowVerdict:
    """One closed window: every feature's result, and whether it raises an alarm."""

    features: list[FeatureDrift]
    alarm: bool
    first: WindowMark | None = None
    last: WindowMark | None = None


class PooledLook(NamedTuple):
    """A feature's pooled test at one look (all None before the ring of windows is full)."""

    statistic: float | None = None
    threshold: float | None = None
    drifted: bool = False


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch of rows did: windows it closed, and rows rejected by reason."""

    verdicts: list[WindowVerdict]
    rejected: Mapping[str, int]


@dataclass
class DriftDetector:
    """Tumbling windows of live rows tested feature by feature against a reference.

    Numeric features use KS with a critical value precomputed for the window
    size; categorical features use the χ² of homogeneity over cells merged by
    reference frequency, the largest cell residual and a test of the unseen
    share (``categorical.py``), decided on their combined p-value; levels are
    Bonferroni over the features. Rows with a missing feature, a non-finite
    number or a value of the wrong type are counted by reason and left out.
    Drift must persist for ``persistence`` consecutive windows before it is
    reported, unless one window alone is beyond the far stricter
    ``strong_alpha`` level, or the last ``pooled_windows`` windows pooled drift
    at level ``pooled_alpha`` (small shifts that no single window shows); after
    a report the detector ignores ``cooldown_windows`` windows, so one shift
    yields one alarm per reference version.
    """

    reference: Reference
    window_size: int = 1000
    alpha: float = 0.05
    persistence: int = 2
    cooldown_windows: int = 10
    correction: Correction = "bonferroni"
    strong_alpha: float = 1e-4
    pooled_windows: int = 8
    pooled_alpha: float = 2e-3
    rejected: Counter[str] = field(default_factory=Counter)
    _filled: int = 0
    _streak: int = 0
    _quiet_for: int = 0
    _first: WindowMark | None = None

    def __post_init__(self) -> None:
        self._numeric = list(self.reference.sorted_values)
        self._categorical = list(self.reference.categorical)
        self._sorted = [self.reference.sorted_values[n] for n in self._numeric]
        self._sizes = [s.size for s in self._sorted]
        self._tables = [
            self.reference.categorical[n].table(self.window_size) for n in self._categorical
        ]
        self._numbers = np.empty((self.window_size, len(self._numeric)))
        self._labels: list[list[str]] = []
        features = max(self.reference.feature_count, 1)
        self._level = self.alpha / features
        self._strong_level = self.strong_alpha / features
        self.thresholds = self._critical_values(self._level)
        self.strong_thresholds = self._critical_values(self._strong_level)
        pooling = self.pooled_windows > 1
        self.pooled = (
            PooledKS(
                self._sorted, self.pooled_windows, self.window_size, self.pooled_alpha, features
            )
            if pooling and self._numeric
            else None
        )
        self.pooled_categories = (
            PooledCategories(self._tables, self.pooled_windows, self.pooled_alpha / features)
            if pooling and self._tables
            else None
        )

    def add(self, row: Row, mark: WindowMark | None = None) -> WindowVerdict | None:
        """Add one row; return the verdict when it closes a window, else None."""
        verdicts = self.add_rows([row], None if mark is None else [mark]).verdicts
        return verdicts[0] if verdicts else None

    def add_rows(
        self, rows: Sequence[Row], marks: Sequence[WindowMark] | None = None
    ) -> BatchOutcome:
        """Add a batch of rows; return the windows it closed and the rows it rejected."""
        numbers, labels, kept, rejected = validate_rows(rows, self._numeric, self._categorical)
        self.rejected.update(rejected)
        return BatchOutcome(self._append(numbers, labels, kept, marks), dict(rejected))

    def add_numeric(
        self, numbers: np.ndarray, labels: Sequence[Sequence[str]] | None = None
    ) -> list[WindowVerdict]:
        """Add already validated rows (n × numeric features, in order; labels per row)."""
        rows = numbers.shape[0]
        if labels is None and self._categorical:
            raise ValueError("a reference with categorical features needs labels")
        per_row = [list(r) for r in labels] if labels is not None else [[] for _ in range(rows)]
        return self._append(numbers, per_row, list(range(rows)), None)

    def _append(
        self,
        numbers: np.ndarray,
        labels: list[list[str]],
        kept: list[int],
        marks: Sequence[WindowMark] | None,
    ) -> list[WindowVerdict]:
        verdicts = []
        start = 0
        while start < len(kept):
            take = min(self.window_size - self._filled, len(kept) - start)
            chunk = slice(start, start + take)
            if self._filled == 0 and marks is not None:
                self._first = marks[kept[start]]
            self._numbers[self._filled : self._filled + take] = numbers[chunk]
            self._labels.extend(labels[chunk])
            self._filled += take
            start += take
            if self._filled == self.window_size:
                last = marks[kept[start - 1]] if marks is not None else None
                verdicts.append(self._close(last))
        return verdicts

    def _close(self, last: WindowMark | None) -> WindowVerdict:
        features, window_drift, strong, pooled_drift = self._score()
        first, self._first = self._first, None
        self._filled = 0
        self._labels = []
        alarm = self._should_alarm(window_drift, strong, pooled_drift)
        return WindowVerdict(features, alarm, first, last)

    def _score(self) -> tuple[list[FeatureDrift], bool, bool, bool]:
        """Every feature's result; whether the window drifted, strongly, and pooled."""
        statistics, ranks = ks_statistics_and_ranks(self._sorted, self._numbers)
        p_values = ks_p_values(statistics, self._sizes, self.window_size)
        counts = [
            table.count([row[j] for row in self._labels]) for j, table in enumerate(self._tables)
        ]
        categorical = [table.test_counts(c) for table, c in zip(self._tables, counts, strict=True)]
        statistics = np.r_[statistics, [c.statistic for c in categorical]]
        p_values = np.r_[p_values, [c.p_value for c in categorical]]
        unseen = [0] * len(self._numeric) + [c.unseen for c in categorical]
        drifted, thresholds = self._decide(statistics, p_values)
        strong = self._beyond(statistics, p_values, self.strong_thresholds, self._strong_level)
        pooled = self._pooled_looks(ranks, counts)
        names = self._numeric + self._categorical
        features = [
            FeatureDrift(
                feature=name,
                statistic=float(statistics[j]),
                p_value=float(p_values[j]),
                threshold=float(thresholds[j]),
                drifted=bool(drifted[j]) or pooled[j].drifted,
                test="ks" if j < len(self._numeric) else "chi2",
                unseen=unseen[j],
                pooled_statistic=pooled[j].statistic,
                pooled_threshold=pooled[j].threshold,
            )
            for j, name in enumerate(names)
        ]
        return features, bool(drifted.any()), bool(strong.any()), any(p.drifted for p in pooled)

    def _pooled_looks(
        self, ranks: tuple[np.ndarray, np.ndarray], counts: list[WindowCounts]
    ) -> list[PooledLook]:
        """The pooled test of every feature, once its ring of windows is full."""
        looks = [PooledLook()] * (len(self._numeric) + len(self._tables))
        numeric = self.pooled.add(self._numbers, ranks) if self.pooled else None
        if self.pooled is not None and numeric is not None:
            for j, (d, t) in enumerate(zip(numeric, self.pooled.thresholds, strict=True)):
                looks[j] = PooledLook(float(d), float(t), bool(d > t))
        shares = self.pooled_categories.add(counts) if self.pooled_categories else None
        if self.pooled_categories is not None and shares is not None:
            level, k = self.pooled_categories.level, len(self._numeric)
            for j, (r, t) in enumerate(zip(shares, self.pooled_categories.thresholds, strict=True)):
                looks[k + j] = PooledLook(r.statistic, t, r.p_value <= level)
        return looks

    def _beyond(
        self, statistics: np.ndarray, p_values: np.ndarray, thresholds: np.ndarray, level: float
    ) -> np.ndarray:
        """KS features over their critical value; categorical ones at or below ``level``.

        A categorical feature has two tests (shares and new categories), so its
        decision is on the combined p-value; its threshold is the shares test's.
        """
        k = len(self._numeric)
        numeric = statistics[:k] > thresholds[:k]
        result: np.ndarray = np.r_[numeric, p_values[k:] <= level]
        return result

    def _decide(
        self, statistics: np.ndarray, p_values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.correction == "bonferroni":
            # The hot path: compare with critical values computed once per reference.
            return self._beyond(statistics, p_values, self.thresholds, self._level), self.thresholds
        drifted = rejections(p_values, self.alpha, "bh")
        level = self.alpha * max(int(drifted.sum()), 1) / drifted.size
        return drifted, self._critical_values(level)

    def _critical_values(self, level: float) -> np.ndarray:
        ks = [ks_critical_value(level, n, self.window_size) for n in self._sizes]
        cat = [table.critical_value(level) for table in self._tables]
        return np.asarray(ks + cat, dtype=float)

    def _should_alarm(self, window_drift: bool, strong: bool, pooled: bool) -> bool:
        if self._quiet_for > 0:
            self._quiet_for -= 1
            return False
        self._streak = self._streak + 1 if window_drift else 0
        if self._streak >= self.persistence or strong or pooled:
            self._streak = 0
            self._quiet_for = self.cooldown_windows
            return True
        return False

    @property
    def filled(self) -> int:
        """Rows in the open window."""
        return self._filled

    def state(self) -> dict[str, Any]:
        """Alarm state and the open window's size, as JSON-ready data (rows: ``rows()``)."""
        return {
            "version": self.reference.version,
            "filled": self._filled,
            "streak": self._streak,
            "quiet_for": self._quiet_for,
            "first": list(self._first) if self._first else None,
            "rejected": dict(self.rejected),
        }

    def rows(self, last: int | None = None) -> dict[str, Any]:
        """The open window's last ``last`` rows (all by default), exact: floats as bytes."""
        count = self._filled if last is None else min(last, self._filled)
        numbers = np.ascontiguousarray(self._numbers[self._filled - count : self._filled])
        return {
            "numbers": base64.b64encode(numbers.tobytes()).decode(),
            "labels": self._labels[len(self._labels) - count :],
        }

    def pooled_chunks(self, last: int) -> list[dict[str, Any]]:
        """The last ``last`` closed windows the pooled test holds, JSON-ready."""
        numeric = self.pooled.chunks(last) if self.pooled else []
        shares = self.pooled_categories.chunks(last) if self.pooled_categories else []
        if numeric and shares:
            return [{**n, **c} for n, c in zip(numeric, shares, strict=True)]
        return numeric or shares

    def restore(
        self,
        state: Mapping[str, Any],
        rows: Sequence[Mapping[str, Any]],
        pooled: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Continue from ``state()``, the open window's ``rows()`` and ``pooled_chunks()``."""
        if self.pooled:
            self.pooled.restore(pooled)
        if self.pooled_categories:
            self.pooled_categories.restore(pooled)
        if state["version"] != self.reference.version:
            raise ValueError("state belongs to another reference version")
        width = len(self._numeric)
        chunks = [np.frombuffer(base64.b64decode(c["numbers"]), dtype=float) for c in rows]
        numbers = np.concatenate(chunks).reshape(-1, width) if chunks else np.empty((0, width))
        filled = int(state["filled"])
        if numbers.shape[0] != filled:
            raise ValueError(f"saved rows ({numbers.shape[0]}) do not fill the window ({filled})")
        self._numbers[:filled] = numbers
        self._filled = filled
        self._labels = [list(row) for chunk in rows for row in chunk["labels"]]
        self._streak = int(state["streak"])
        self._quiet_for = int(state["quiet_for"])
        self._first = WindowMark(*state["first"]) if state["first"] else None
        self.rejected = Counter(state["rejected"])
