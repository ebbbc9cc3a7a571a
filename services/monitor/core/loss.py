"""Concept drift of a regressor: live per-outcome loss against the version's validation loss."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.spec import RegressionLoss

#: Gamma shape assumed for ``loss / mean loss`` at most: a Gaussian residual's squared
#: error is exactly Gamma(½), its absolute error is lighter-tailed than Gamma(1).
NOMINAL_SHAPE: Mapping[RegressionLoss, float] = {"squared": 0.5, "absolute": 1.0}

#: The smallest shape used, however heavy the tail of the live losses looks.
MIN_SHAPE = 0.05

#: Live losses estimating the shape before it replaces the nominal one.
SHAPE_SAMPLE = 20


def outcome_loss(predicted: float, true: float, loss: RegressionLoss) -> float:
    """One outcome's loss: squared or absolute error.

    >>> outcome_loss(3.0, 1.0, "squared"), outcome_loss(3.0, 1.0, "absolute")
    (4.0, 2.0)
    """
    error = predicted - true
    return error * error if loss == "squared" else abs(error)


def baseline_loss(metrics: Mapping[str, float], loss: RegressionLoss) -> float | None:
    """The mean per-outcome loss a version showed on validation, from its run's metrics.

    Squared loss: ``rmse²`` (the mean squared error); absolute loss: ``mae``. None
    when the run did not log the metric (nothing to compare live loss with).

    >>> baseline_loss({"rmse": 2.0, "mae": 1.5}, "squared"), baseline_loss({"mae": 1.5}, "absolute")
    (4.0, 1.5)
    >>> baseline_loss({"accuracy": 0.9}, "squared") is None
    True
    """
    if loss == "squared":
        rmse = metrics.get("rmse")
        return None if rmse is None else float(rmse) ** 2
    mae = metrics.get("mae")
    return None if mae is None else float(mae)


@dataclass(frozen=True)
class LossVerdict:
    """A significant rise of the mean loss: the evidence and the yardsticks."""

    rolling_loss: float
    baseline: float
    statistic: float
    threshold: float
    p_value: float
    labelled: int


@dataclass
class LossCusum:
    """One-sided scale CUSUM: has the mean per-outcome loss risen by ``min_rise`` (relative)?

    Losses are modelled as Gamma with shape ``k``: each outcome adds the
    log-likelihood ratio of H1 (mean = baseline × (1 + ``min_rise``)) against H0
    (mean = baseline), ``k · (r/(1+r) · x/baseline − ln(1+r))``; the sum is
    floored at zero and alarms at ``threshold`` = ln(ARL₀), as ``AccuracyCusum``
    does. When the losses' true shape is ``k'``, the mean run between false alarms
    is about ARL₀^(k'/k), so ``k`` errs low: the nominal shape of the loss (Gaussian
    residuals), or the live losses' moment estimate ``mean² / variance`` when that
    is smaller (heavier tails). A rise in scale leaves the shape as it is, so drift
    does not bend the estimate. ``x / baseline`` is winsorized at ``cap``: one
    outlier cannot alarm alone. p-value: Ville's bound exp(−statistic).

    Parameters
    ----------
    baseline
        The version's validation mean loss (``baseline_loss``).
    loss
        Squared or absolute error; sets the nominal shape.
    min_rise
        Relative rise of the mean loss the test is tuned to detect.
    arl
        Mean outcomes between false alarms on an unchanged model, at the assumed shape.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> cusum = LossCusum(baseline=1.0, loss="squared")
    >>> [cusum.add(float(e * e)) for e in rng.normal(size=2000)].count(None)
    2000
    >>> verdicts = [cusum.add(float(e * e)) for e in rng.normal(scale=2.0, size=500)]
    >>> next(i for i, v in enumerate(verdicts) if v is not None) < 200
    True
    """

    baseline: float
    loss: RegressionLoss = "squared"
    min_rise: float = 0.5
    arl: float = 10_000.0
    rolling: int = 500
    min_labelled: int = 50
    cap: float = 10.0
    statistic: float = 0.0
    labelled: int = 0
    _recent: deque[float] = field(init=False, default_factory=deque)
    _sums: list[float] = field(init=False, default_factory=lambda: [0.0, 0.0, 0.0])
    """Running sums over ``_recent``: losses, winsorized ratios, squared ratios (O(1) a step)."""

    def __post_init__(self) -> None:
        self._scale = max(self.baseline, 1e-12)  # a perfect validation: any live loss counts
        self._gain = self.min_rise / (1 + self.min_rise)
        self._cost = math.log1p(self.min_rise)
        self.threshold = math.log(self.arl)

    @property
    def rolling_loss(self) -> float | None:
        """Mean loss of the last ``rolling`` outcomes, None before any."""
        return self._sums[0] / len(self._recent) if self._recent else None

    @property
    def shape(self) -> float:
        """The Gamma shape the steps assume now (see the class docstring)."""
        nominal = NOMINAL_SHAPE[self.loss]
        n = len(self._recent)
        if n < SHAPE_SAMPLE:
            return nominal
        _, total, squares = self._sums
        mean = total / n
        variance = (squares - n * mean * mean) / (n - 1)
        if variance <= 1e-12:
            return nominal
        return max(MIN_SHAPE, min(nominal, mean * mean / variance))

    def add(self, loss: float) -> LossVerdict | None:
        """Add one outcome's loss; return a verdict when the rise becomes significant."""
        ratio = self._remember(loss)
        self.labelled += 1
        step = self.shape * (self._gain * ratio - self._cost)
        self.statistic = max(0.0, self.statistic + step)
        if self.statistic < self.threshold or self.labelled < self.min_labelled:
            return None
        verdict = LossVerdict(
            rolling_loss=self._sums[0] / len(self._recent),
            baseline=self.baseline,
            statistic=self.statistic,
            threshold=self.threshold,
            p_value=min(1.0, math.exp(-self.statistic)),
            labelled=self.labelled,
        )
        self.statistic = 0.0  # start over: the next alarm needs fresh evidence
        return verdict

    def _remember(self, loss: float) -> float:
        """Keep ``loss`` among the recent ones; its winsorized ratio to the baseline."""
        if len(self._recent) == self.rolling:
            self._shift(self._recent.popleft(), -1.0)
        self._recent.append(loss)
        return self._shift(loss, 1.0)

    def _shift(self, loss: float, sign: float) -> float:
        ratio = min(loss / self._scale, self.cap)
        self._sums[0] += sign * loss
        self._sums[1] += sign * ratio
        self._sums[2] += sign * ratio * ratio
        return ratio

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
        self._recent, self._sums = deque(), [0.0, 0.0, 0.0]
        for loss in state["recent"][-self.rolling :]:
            self._remember(float(loss))
