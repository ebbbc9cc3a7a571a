"""Concept drift: live accuracy against the champion's validation accuracy, tested sequentially."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConceptVerdict:
    """A significant accuracy drop: the evidence and the yardsticks."""

    rolling_accuracy: float
    baseline: float
    statistic: float
    threshold: float
    p_value: float
    labelled: int


@dataclass
class AccuracyCusum:
    """One-sided Bernoulli CUSUM: has accuracy dropped from ``baseline`` by ``min_drop``?

    Each outcome adds its log-likelihood ratio of H1 (accuracy = baseline −
    min_drop) against H0 (accuracy = baseline); the sum is floored at zero and
    an alarm is raised when it reaches ``threshold`` = ln(ARL₀), so that on an
    unchanged model the mean number of outcomes between false alarms is at least
    ARL₀ (Lorden's bound). The reported p-value, exp(−statistic), is Ville's
    bound for the likelihood ratio since the sum last left zero.

    Examples
    --------
    >>> cusum = AccuracyCusum(baseline=0.9, min_drop=0.1, arl=1000)
    >>> [cusum.add(True) for _ in range(200)].count(None)
    200
    >>> verdicts = [cusum.add(i % 2 == 0) for i in range(200)]  # accuracy 0.5
    >>> next(i for i, v in enumerate(verdicts) if v is not None) < 50
    True
    """

    baseline: float
    min_drop: float = 0.05
    arl: float = 10_000.0
    rolling: int = 500
    min_labelled: int = 50
    statistic: float = 0.0
    labelled: int = 0
    _recent: deque[bool] = field(default_factory=deque)

    def __post_init__(self) -> None:
        p0 = min(max(self.baseline, 1e-3), 1 - 1e-3)
        p1 = max(p0 - self.min_drop, 1e-3)
        self._if_correct = math.log(p1 / p0)
        self._if_wrong = math.log((1 - p1) / (1 - p0))
        self.threshold = math.log(self.arl)
        self._recent = deque(self._recent, maxlen=self.rolling)

    @property
    def rolling_accuracy(self) -> float | None:
        """Share correct among the last ``rolling`` outcomes, None before any."""
        return sum(self._recent) / len(self._recent) if self._recent else None

    def add(self, correct: bool) -> ConceptVerdict | None:
        """Add one labelled outcome; return a verdict when the drop becomes significant."""
        self._recent.append(correct)
        self.labelled += 1
        step = self._if_correct if correct else self._if_wrong
        self.statistic = max(0.0, self.statistic + step)
        if self.statistic < self.threshold or self.labelled < self.min_labelled:
            return None
        verdict = ConceptVerdict(
            rolling_accuracy=sum(self._recent) / len(self._recent),
            baseline=self.baseline,
            statistic=self.statistic,
            threshold=self.threshold,
            p_value=min(1.0, math.exp(-self.statistic)),
            labelled=self.labelled,
        )
        self.statistic = 0.0  # start over: the next alarm needs fresh evidence
        return verdict

    def state(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {
            "statistic": self.statistic,
            "labelled": self.labelled,
            "recent": list(self._recent),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()``."""
        self.statistic = float(state["statistic"])
        self.labelled = int(state["labelled"])
        self._recent = deque((bool(x) for x in state["recent"]), maxlen=self.rolling)
