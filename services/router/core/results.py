"""What a look computes: the configuration it decides under, its results and running bounds."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.router.core import stats
from shared.events import Action
from shared.spec import RegressionLoss


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: The primary metrics: accuracy from labels, a numeric reward, or a regressor's per-outcome loss.
PrimaryMetric = Literal["accuracy", "reward", "squared_error", "absolute_error"]
#: The loss metrics (lower is better), by the spec's ``loss`` they come from.
LOSS_METRICS: dict[RegressionLoss, PrimaryMetric] = {
    "squared": "squared_error",
    "absolute": "absolute_error",
}


class DecisionConfig(_Frozen):
    """How an experiment decides; fixed when it opens."""

    metric: PrimaryMetric = Field(
        "accuracy",
        description="Accuracy or reward: higher is better. A regressor's squared_error or "
        "absolute_error: the mean per-outcome loss, lower is better.",
    )
    alpha: float = Field(0.05, gt=0, lt=1)
    n_star: float = Field(2000.0, gt=0, description="Units (both arms) where the CS is tightest.")
    practical_minimum: float = Field(
        0.0,
        description="Promote only above this absolute improvement (for a loss: a reduction of "
        "the mean loss, in the loss's units).",
    )
    min_labelled_per_arm: int = 100
    min_correct_per_arm: int = 25
    min_wrong_per_arm: int = 25
    max_labelled_per_arm: int = 20_000
    srm_alpha: float = 0.001
    srm_min_per_arm: int = 20
    error_rate_margin: float = Field(
        0.005, ge=0, description="Absolute floor of the tolerated error-rate increase."
    )
    error_rate_relative_margin: float = Field(
        0.5, ge=0, description="Tolerated error-rate increase as a share of the champion's rate."
    )
    log_latency_margin: float = Field(math.log(1.2), description="Tolerated log-mean slow-down.")
    latency_floor_ms: float = Field(
        5.0, ge=0, description="A slow-down smaller than this (mean or p95) never harms."
    )
    p95_ratio_limit: float = 1.5
    label_rate_margin: float = Field(0.05, ge=0, description="Tolerated label-rate drop.")
    label_rate_relative_margin: float = Field(
        0.0, ge=0, description="Tolerated label-rate drop as a share of the champion's rate."
    )

    @property
    def is_loss(self) -> bool:
        """Whether the primary metric is a regressor's loss (lower is better).

        >>> DecisionConfig(metric="squared_error").is_loss, DecisionConfig().is_loss
        (True, False)
        """
        return self.metric in LOSS_METRICS.values()


def rate_margin(champion_rate: float, absolute: float, relative: float) -> float:
    """The tolerated increase of a rate: a share of the champion's, never below ``absolute``.

    An absolute margin alone is lenient for rare events: 0.1 % → 1.0 % errors is
    "within one point", yet ten times as many failures.

    >>> rate_margin(0.001, 0.005, 0.5), rate_margin(0.2, 0.005, 0.5)
    (0.005, 0.1)
    """
    return max(absolute, relative * champion_rate)


class RunningBounds(_Frozen):
    """Always-valid p-value as a running minimum and the interval as a running intersection."""

    p_value: float = 1.0
    low: float = -math.inf
    high: float = math.inf

    def tighten(self, p_value: float, low: float, high: float) -> RunningBounds:
        """The bounds after one more look."""
        return RunningBounds(
            p_value=min(self.p_value, p_value), low=max(self.low, low), high=min(self.high, high)
        )


class MetricResult(_Frozen):
    """One metric's comparison at one look (stratified over allocation periods)."""

    name: str
    champion: float
    challenger: float
    diff: float
    se: float
    fixed_horizon_p: float
    fixed_horizon_ci: tuple[float, float]
    fixed_horizon_note: str = "not valid under peeking: for reference only"
    always_valid_p: float
    e_value: float
    always_valid_ci: tuple[float, float]
    relative_lift: float | None = None
    relative_lift_ci: tuple[float, float] | None = None
    effect_size: float | None = None
    effect_size_kind: str | None = None
    minimum_detectable_effect: float | None = Field(
        None, description="Absolute difference detectable with 80 % power at this sample."
    )
    required_n_per_arm: float | None = None
    strata: int = Field(1, description="Allocation periods the estimate combines.")
    lower_is_better: bool = Field(
        False, description="A loss: the challenger is better when the difference is below 0."
    )

    @property
    def improvement_ci(self) -> tuple[float, float]:
        """The always-valid interval of the improvement (> 0: the challenger is better).

        >>> r = MetricResult(name="squared_error", champion=2.0, challenger=1.0, diff=-1.0,
        ...     se=0.1, fixed_horizon_p=0.0, fixed_horizon_ci=(-1.2, -0.8), always_valid_p=0.0,
        ...     e_value=1e9, always_valid_ci=(-1.5, -0.5), lower_is_better=True)
        >>> r.improvement_ci
        (0.5, 1.5)
        """
        low, high = self.always_valid_ci
        return (-high, -low) if self.lower_is_better else (low, high)


class GuardrailResult(_Frozen):
    """A one-sided guardrail: ``deterioration`` > 0 means the challenger is worse."""

    name: str
    deterioration: float
    upper: float
    lower: float
    margin: float
    harmed: bool
    non_inferior: bool
    detail: dict[str, float] = Field(default_factory=dict)


class SrmResult(_Frozen):
    """Sample-ratio check of assigned units against each period's split, combined."""

    assigned_p: float
    chi_square_df: int = Field(0, description="Periods tested (each adds its χ² and one df).")
    expected_challenger_share: float
    observed_challenger_share: float = 0.0
    mismatch: bool


class Decision(_Frozen):
    """What one look concluded, why, and the numbers behind it."""

    action: Action
    reasons: tuple[str, ...]
    primary: MetricResult | None
    guardrails: tuple[GuardrailResult, ...]
    srm: SrmResult
    bounds: dict[str, RunningBounds]


def running_interval(
    name: str,
    diff: float,
    se: float,
    n_total: int,
    cfg: DecisionConfig,
    bounds: dict[str, RunningBounds],
    ready: bool,
) -> RunningBounds:
    """Tighten ``name``'s running bounds with this look's confidence sequence and p-value.

    Before the minimum sample (``ready``) the look's own interval is shown but not
    kept: the normal approximation behind it is not yet trustworthy, and one
    degenerate early interval would otherwise stay in the intersection for good.
    """
    half = stats.cs_half_width(se, n_total, cfg.alpha, cfg.n_star)
    p = stats.always_valid_p(diff, se, n_total, cfg.alpha, cfg.n_star)
    if not ready:
        return RunningBounds(p_value=p, low=diff - half, high=diff + half)
    running = bounds.get(name, RunningBounds()).tighten(p, diff - half, diff + half)
    bounds[name] = running
    return running
