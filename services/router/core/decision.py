"""The decision at each look of an experiment: hold, rollback, promote, continue or inconclusive.

Everything here is a pure function of the arms' sufficient statistics, the
configuration fixed when the experiment opened, and the running bounds of the
previous look (so the always-valid p-value never rises and the interval never
widens between looks).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.router.core import stats

Action = Literal["hold", "rollback", "promote", "continue", "inconclusive"]

#: Latency bins: upper edges in ms, log-spaced from 0.1 ms to ~100 s (p95 from counts).
LATENCY_EDGES_MS: tuple[float, ...] = tuple(0.1 * 10 ** (i / 10) for i in range(61))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ArmStats(_Frozen):
    """Sufficient statistics of one arm: every number in a report is recomputable from them."""

    assigned: int = 0
    errors: int = 0
    labelled: int = 0
    correct: int = 0
    reward_n: int = 0
    reward_sum: float = 0.0
    reward_sumsq: float = 0.0
    latency_n: int = 0
    log_latency_sum: float = 0.0
    log_latency_sumsq: float = 0.0
    latency_bins: tuple[int, ...] = ()

    @property
    def accuracy(self) -> float:
        """Share of labelled outcomes that were correct."""
        return self.correct / self.labelled if self.labelled else 0.0


class SplitTotals(_Frozen):
    """Units of both arms counted while each challenger share was in force (for SRM)."""

    assigned: dict[str, int] = Field(default_factory=dict)
    labelled: dict[str, int] = Field(default_factory=dict)
    challenger_assigned: dict[str, int] = Field(default_factory=dict)
    challenger_labelled: dict[str, int] = Field(default_factory=dict)


class ExperimentStats(_Frozen):
    """The two arms plus the split history."""

    champion: ArmStats = ArmStats()
    challenger: ArmStats = ArmStats()
    split: SplitTotals = SplitTotals()


class DecisionConfig(_Frozen):
    """How an experiment decides; fixed when it opens."""

    metric: Literal["accuracy", "reward"] = "accuracy"
    alpha: float = Field(0.05, gt=0, lt=1)
    n_star: float = Field(2000.0, gt=0, description="Units (both arms) where the CS is tightest.")
    practical_minimum: float = Field(0.0, description="Promote only above this absolute lift.")
    min_labelled_per_arm: int = 100
    min_correct_per_arm: int = 25
    min_wrong_per_arm: int = 25
    max_labelled_per_arm: int = 20_000
    srm_alpha: float = 0.001
    srm_min_per_arm: int = 20
    error_rate_margin: float = 0.01
    log_latency_margin: float = Field(math.log(1.2), description="Tolerated log-mean slow-down.")
    latency_floor_ms: float = Field(
        5.0, ge=0, description="A slow-down smaller than this (mean or p95) never harms."
    )
    p95_ratio_limit: float = 1.5
    label_rate_margin: float = 0.05


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
    """One metric's comparison at one look."""

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
    achieved_power: float | None = None
    minimum_detectable_effect: float | None = None
    required_n_per_arm: float | None = None


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
    """Sample-ratio checks against the configured split."""

    assigned_p: float
    labelled_p: float
    expected_challenger_share: float
    mismatch: bool


class Decision(_Frozen):
    """What one look concluded, why, and the numbers behind it."""

    action: Action
    reasons: tuple[str, ...]
    primary: MetricResult | None
    guardrails: tuple[GuardrailResult, ...]
    srm: SrmResult
    bounds: dict[str, RunningBounds]


def _mean_var(n: int, total: float, sumsq: float) -> tuple[float, float]:
    if n < 2:
        return (total / n if n else 0.0), 0.0
    mean = total / n
    return mean, max(0.0, (sumsq - n * mean * mean) / (n - 1))


def _interval(
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


def primary_result(
    s: ExperimentStats, cfg: DecisionConfig, bounds: dict[str, RunningBounds]
) -> MetricResult | None:
    """The primary metric's comparison (accuracy or mean reward), or None without data."""
    a, b = s.champion, s.challenger
    if cfg.metric == "accuracy":
        if a.labelled < 2 or b.labelled < 2:
            return None
        ma, mb = a.accuracy, b.accuracy
        va, vb, na, nb = ma * (1 - ma), mb * (1 - mb), a.labelled, b.labelled
        test = stats.diff_proportions(a.correct, na, b.correct, nb, cfg.alpha)
        effect, kind = stats.cohens_h(ma, mb), "cohens_h"
    else:
        if a.reward_n < 2 or b.reward_n < 2:
            return None
        (ma, va), (mb, vb) = (
            _mean_var(a.reward_n, a.reward_sum, a.reward_sumsq),
            _mean_var(b.reward_n, b.reward_sum, b.reward_sumsq),
        )
        na, nb = a.reward_n, b.reward_n
        test = stats.welch(ma, va, na, mb, vb, nb, cfg.alpha)
        effect, kind = stats.cohens_d(ma, va, na, mb, vb, nb), "cohens_d"
    ready = minimum_sample_met(s, cfg)
    return _metric(cfg, bounds, ready, test, (ma, va, na), (mb, vb, nb), effect, kind)


def _metric(
    cfg: DecisionConfig,
    bounds: dict[str, RunningBounds],
    ready: bool,
    test: stats.TwoSample,
    arm_a: tuple[float, float, int],
    arm_b: tuple[float, float, int],
    effect: float,
    kind: str,
) -> MetricResult:
    (ma, va, na), (mb, vb, nb) = arm_a, arm_b
    n_total = na + nb
    running = _interval(cfg.metric, test.diff, test.se, n_total, cfg, bounds, ready)
    lift = stats.relative_lift(ma, va, na, mb, vb, nb, cfg.alpha) if ma != 0 else None
    return MetricResult(
        name=cfg.metric,
        champion=ma,
        challenger=mb,
        diff=test.diff,
        se=test.se,
        fixed_horizon_p=test.p_value,
        fixed_horizon_ci=(test.ci_low, test.ci_high),
        always_valid_p=running.p_value,
        e_value=stats.e_value(test.diff, test.se, n_total, cfg.alpha, cfg.n_star),
        always_valid_ci=(running.low, running.high),
        relative_lift=None if lift is None else lift.lift,
        relative_lift_ci=None if lift is None else (lift.ci_low, lift.ci_high),
        effect_size=effect,
        effect_size_kind=kind,
        achieved_power=stats.achieved_power(effect, min(na, nb), cfg.alpha) if effect else 0.0,
        minimum_detectable_effect=stats.minimum_detectable_effect(min(na, nb), cfg.alpha),
        required_n_per_arm=stats.required_n_per_arm(effect, cfg.alpha) if effect else None,
    )


def _guardrail(
    name: str,
    worse: float,
    se: float,
    n_total: int,
    margin: float,
    cfg: DecisionConfig,
    bounds: dict[str, RunningBounds],
    ready: bool,
) -> GuardrailResult:
    running = _interval(name, worse, se, n_total, cfg, bounds, ready)
    return GuardrailResult(
        name=name,
        deterioration=worse,
        lower=running.low,
        upper=running.high,
        margin=margin,
        harmed=ready and running.low > margin,
        non_inferior=ready and running.high < margin,
    )


def _rate_guardrail(
    name: str,
    events: tuple[int, int],
    units: tuple[int, int],
    margin: float,
    higher_is_worse: bool,
    cfg: DecisionConfig,
    bounds: dict[str, RunningBounds],
) -> GuardrailResult:
    (xa, xb), (na, nb) = events, units
    ra, rb = min(1.0, xa / na), min(1.0, xb / nb)
    se = math.sqrt(_rate_var(xa, na) + _rate_var(xb, nb))
    worse = rb - ra if higher_is_worse else ra - rb
    ready = min(na, nb) >= cfg.min_labelled_per_arm
    result = _guardrail(name, worse, se, na + nb, margin, cfg, bounds, ready)
    return result.model_copy(update={"detail": {"champion": ra, "challenger": rb}})


def _rate_var(events: float, units: float) -> float:
    """Variance of a rate's estimate, smoothed so that 0 or all events is not certainty.

    >>> _rate_var(0, 100) > 0
    True
    """
    smoothed = min(1.0, (events + 0.5) / (units + 1))
    return smoothed * (1 - smoothed) / units if smoothed < 1 else 0.25 / (units + 1) ** 2


def p95_ms(arm: ArmStats) -> float:
    """The 95th percentile latency from the arm's log-spaced bins (upper bin edge).

    >>> round(p95_ms(ArmStats(latency_bins=(0,) * 10 + (94, 6))), 3)
    1.259
    """
    total = sum(arm.latency_bins)
    if total == 0:
        return 0.0
    seen = 0
    for i, count in enumerate(arm.latency_bins):
        seen += count
        if seen >= 0.95 * total:
            return LATENCY_EDGES_MS[min(i, len(LATENCY_EDGES_MS) - 1)]
    return LATENCY_EDGES_MS[-1]


def latency_margin(champion_ms: float, cfg: DecisionConfig) -> float:
    """The tolerated log-mean slow-down: the relative margin, or the absolute floor if wider.

    With answers in a fraction of a millisecond a 20 % slow-down is microseconds, which
    no user notices but which noise alone produces; the floor keeps such arms equal.

    >>> cfg = DecisionConfig()
    >>> round(latency_margin(50.0, cfg), 4) == round(math.log(1.2), 4)  # 20 % of 50 ms > 5 ms
    True
    >>> round(math.exp(latency_margin(0.2, cfg)) * 0.2 - 0.2, 6)  # 5 ms on a 0.2 ms champion
    5.0
    """
    if champion_ms <= 0:
        return cfg.log_latency_margin
    return max(cfg.log_latency_margin, math.log1p(cfg.latency_floor_ms / champion_ms))


def _latency_guardrail(
    s: ExperimentStats, cfg: DecisionConfig, bounds: dict[str, RunningBounds]
) -> GuardrailResult:
    a, b = s.champion, s.challenger
    ma, va = _mean_var(a.latency_n, a.log_latency_sum, a.log_latency_sumsq)
    mb, vb = _mean_var(b.latency_n, b.log_latency_sum, b.log_latency_sumsq)
    se = math.sqrt(va / a.latency_n + vb / b.latency_n)
    ready = min(a.latency_n, b.latency_n) >= cfg.min_labelled_per_arm
    n_total = a.latency_n + b.latency_n
    margin = latency_margin(math.exp(ma), cfg)
    result = _guardrail("log_latency", mb - ma, se, n_total, margin, cfg, bounds, ready)
    pa, pb = p95_ms(a), p95_ms(b)
    ratio = pb / pa if pa > 0 else 1.0
    # A p95 far above the champion's harms only when the slow-down is also significant,
    # and more than the floor in milliseconds.
    slower_p95 = ratio > cfg.p95_ratio_limit and pb - pa > cfg.latency_floor_ms
    harmed = result.harmed or (ready and slower_p95 and result.lower > 0)
    detail = {"champion_p95_ms": pa, "challenger_p95_ms": pb, "p95_ratio": ratio}
    return result.model_copy(update={"harmed": harmed, "detail": detail})


def guardrail_results(
    s: ExperimentStats, cfg: DecisionConfig, bounds: dict[str, RunningBounds]
) -> tuple[GuardrailResult, ...]:
    """The one-sided guardrails that have data: error rate, latency, label rate."""
    a, b = s.champion, s.challenger
    results = []
    # The gateway reports failures per variant (prediction-failed). Until an arm has failed
    # at all there is nothing to compare, and a guardrail on 0 vs 0 would only delay verdicts.
    if (a.errors or b.errors) and a.assigned + a.errors > 0 and b.assigned + b.errors > 0:
        units = (a.assigned + a.errors, b.assigned + b.errors)
        results.append(
            _rate_guardrail(
                "error_rate", (a.errors, b.errors), units, cfg.error_rate_margin, True, cfg, bounds
            )
        )
    if a.latency_n >= 2 and b.latency_n >= 2:
        results.append(_latency_guardrail(s, cfg, bounds))
    label_rate = _label_rate_guardrail(s, cfg, bounds)
    if label_rate is not None:
        results.append(label_rate)
    return tuple(results)


def _label_rate_guardrail(
    s: ExperimentStats, cfg: DecisionConfig, bounds: dict[str, RunningBounds]
) -> GuardrailResult | None:
    """Label rate compared within each split, where both arms' predictions are equally old.

    A ramp gives the challenger more recent predictions, whose feedback has had less
    time to arrive; comparing pooled rates would count that delay as harm.
    """
    split = s.split
    strata = []
    for share, total in split.assigned.items():
        nb = split.challenger_assigned.get(share, 0)
        na = total - nb
        # A split with a handful of units per arm says nothing yet (and a 0/1 rate is no fact).
        if min(na, nb) >= cfg.srm_min_per_arm:
            lb = split.challenger_labelled.get(share, 0)
            la = split.labelled.get(share, 0) - lb
            strata.append((total, la, na, lb, nb))
    if not strata:
        return None
    weight = sum(t for t, *_ in strata)
    worse = sum(t * (min(1.0, la / na) - min(1.0, lb / nb)) for t, la, na, lb, nb in strata)
    var = sum(
        (t / weight) ** 2 * (_rate_var(la, na) + _rate_var(lb, nb)) for t, la, na, lb, nb in strata
    )
    n_a, n_b = sum(na for _, _, na, _, _ in strata), sum(nb for _, _, _, _, nb in strata)
    ready = min(n_a, n_b) >= cfg.min_labelled_per_arm
    result = _guardrail(
        "label_rate", worse / weight, var**0.5, n_a + n_b, cfg.label_rate_margin, cfg, bounds, ready
    )
    pooled_a = s.champion.labelled / s.champion.assigned if s.champion.assigned else 0.0
    pooled_b = s.challenger.labelled / s.challenger.assigned if s.challenger.assigned else 0.0
    return result.model_copy(update={"detail": {"champion": pooled_a, "challenger": pooled_b}})


def expected_challenger_share(totals: dict[str, int]) -> float:
    """The challenger's expected share of units counted under the given splits.

    >>> expected_challenger_share({"0.1": 1000, "0.5": 1000})
    0.3
    """
    n = sum(totals.values())
    return sum(float(share) * count for share, count in totals.items()) / n if n else 0.0


def _srm_p(a: int, b: int, totals: dict[str, int], cfg: DecisionConfig) -> float:
    share = expected_challenger_share(totals)
    n = a + b
    expected = (n * (1 - share), n * share)
    if min(expected) < cfg.srm_min_per_arm:
        return 1.0
    return stats.srm_p_value((a, b), expected)


def srm_result(s: ExperimentStats, cfg: DecisionConfig) -> SrmResult:
    """χ² sample-ratio checks on assignments and on labelled outcomes."""
    a, b = s.champion, s.challenger
    assigned_p = _srm_p(a.assigned, b.assigned, s.split.assigned, cfg)
    labelled_p = _srm_p(a.labelled, b.labelled, s.split.labelled, cfg)
    return SrmResult(
        assigned_p=assigned_p,
        labelled_p=labelled_p,
        expected_challenger_share=expected_challenger_share(s.split.assigned),
        mismatch=min(assigned_p, labelled_p) < cfg.srm_alpha,
    )


def minimum_sample_met(s: ExperimentStats, cfg: DecisionConfig) -> bool:
    """Whether each arm has enough labelled outcomes (and correct and wrong ones) for a verdict."""
    for arm in (s.champion, s.challenger):
        if cfg.metric == "reward":
            if arm.reward_n < cfg.min_labelled_per_arm:
                return False
            continue
        wrong = arm.labelled - arm.correct
        if (
            arm.labelled < cfg.min_labelled_per_arm
            or arm.correct < cfg.min_correct_per_arm
            or wrong < cfg.min_wrong_per_arm
        ):
            return False
    return True


def evaluate(
    s: ExperimentStats, cfg: DecisionConfig, previous: dict[str, RunningBounds]
) -> Decision:
    """The decision at this look, with every number behind it and the tightened bounds."""
    bounds = dict(previous)
    srm = srm_result(s, cfg)
    primary = primary_result(s, cfg, bounds)
    guardrails = guardrail_results(s, cfg, bounds)
    action, reasons = _rule(s, cfg, srm, primary, guardrails)
    return Decision(
        action=action,
        reasons=reasons,
        primary=primary,
        guardrails=guardrails,
        srm=srm,
        bounds=bounds,
    )


def _rule(
    s: ExperimentStats,
    cfg: DecisionConfig,
    srm: SrmResult,
    primary: MetricResult | None,
    guardrails: tuple[GuardrailResult, ...],
) -> tuple[Action, tuple[str, ...]]:
    if srm.mismatch:
        which = "assigned" if srm.assigned_p < cfg.srm_alpha else "labelled"
        return "hold", (f"sample_ratio_mismatch_{which}",)
    if primary is None or not minimum_sample_met(s, cfg):
        return "continue", ("minimum_sample_not_reached",)
    harmed = tuple(f"guardrail_harmed:{g.name}" for g in guardrails if g.harmed)
    if harmed:
        return "rollback", harmed
    low, high = primary.always_valid_ci
    if high < 0:
        return "rollback", ("primary_worse",)
    if low > cfg.practical_minimum:
        pending = tuple(
            f"guardrail_not_yet_non_inferior:{g.name}" for g in guardrails if not g.non_inferior
        )
        if not pending:
            return "promote", ("primary_better", "guardrails_non_inferior")
        if _at_max(s, cfg):
            return "inconclusive", ("max_sample", *pending)
        return "continue", pending
    if _at_max(s, cfg):
        return "inconclusive", ("max_sample",)
    return "continue", ("no_verdict_yet",)


def _at_max(s: ExperimentStats, cfg: DecisionConfig) -> bool:
    arms = (s.champion, s.challenger)
    n = [arm.reward_n if cfg.metric == "reward" else arm.labelled for arm in arms]
    return min(n) >= cfg.max_labelled_per_arm
