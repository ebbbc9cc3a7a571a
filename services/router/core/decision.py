"""The decision at each look of an experiment: hold, rollback, promote, continue or inconclusive.

Everything here is a pure function of the strata's sufficient statistics, the
configuration fixed when the experiment opened, and the running bounds of the
previous look (so the always-valid p-value never rises and the interval never
widens between looks). Every comparison is made within an allocation period and
combined (``stats.stratified_difference``); an arm is never compared with the
other arm's outcomes from another period.
"""

from __future__ import annotations

from services.router.core import stats
from services.router.core.arms import (
    LATENCY_EDGES_MS,
    ArmStats,
    ExperimentStats,
    StratumStats,
    share_key,
)
from services.router.core.guardrails import guardrail_results, latency_margin, p95_ms
from services.router.core.results import (
    Decision,
    DecisionConfig,
    GuardrailResult,
    MetricResult,
    RunningBounds,
    SrmResult,
    running_interval,
)
from shared.events import Action

__all__ = [
    "LATENCY_EDGES_MS",
    "ArmStats",
    "Decision",
    "DecisionConfig",
    "ExperimentStats",
    "GuardrailResult",
    "MetricResult",
    "RunningBounds",
    "SrmResult",
    "StratumStats",
    "evaluate",
    "guardrail_results",
    "latency_margin",
    "metric_count",
    "minimum_sample_met",
    "p95_ms",
    "primary_result",
    "share_key",
    "srm_result",
]


def _arm_sample(arm: ArmStats, cfg: DecisionConfig, s: ExperimentStats) -> stats.Arm:
    if cfg.metric == "accuracy":
        p = arm.accuracy
        return stats.Arm(p, p * (1 - p), arm.labelled)
    if cfg.is_loss:  # each arm's variance from its own outcomes: Welch's scale
        return stats.shifted_mean_var(arm.loss_n, arm.loss_sum, arm.loss_sumsq, s.loss_shift)
    return stats.shifted_mean_var(arm.reward_n, arm.reward_sum, arm.reward_sumsq, s.reward_shift)


def metric_count(arm: ArmStats, cfg: DecisionConfig) -> int:
    """The arm's outcomes that the primary metric is estimated from."""
    if cfg.is_loss:
        return arm.loss_n
    return arm.reward_n if cfg.metric == "reward" else arm.labelled


def _strata_samples(s: ExperimentStats, cfg: DecisionConfig) -> list[tuple[stats.Arm, stats.Arm]]:
    samples = [
        (_arm_sample(t.champion, cfg, s), _arm_sample(t.challenger, cfg, s))
        for t in s.strata.values()
    ]
    return [(a, b) for a, b in samples if a.n >= 2 and b.n >= 2]


def primary_result(
    s: ExperimentStats, cfg: DecisionConfig, bounds: dict[str, RunningBounds]
) -> MetricResult | None:
    """The primary metric's stratified comparison (accuracy, mean reward or loss), or None yet."""
    strata = _strata_samples(s, cfg)
    if not strata:
        return None
    combined = stats.stratified_difference(strata)
    test = stats.stratified_test(combined, cfg.alpha, normal=cfg.metric == "accuracy")
    ready = minimum_sample_met(s, cfg)
    running = running_interval(cfg.metric, test.diff, test.se, combined.n_total, cfg, bounds, ready)
    ma, mb = combined.mean_a, combined.mean_b
    lift = (
        stats.relative_lift(ma, combined.var_mean_a, 1, mb, combined.var_mean_b, 1, cfg.alpha)
        if ma != 0
        else None
    )
    effect, kind = _effect_size(strata, ma, mb, cfg)
    return MetricResult(
        name=cfg.metric,
        champion=ma,
        challenger=mb,
        diff=test.diff,
        se=test.se,
        fixed_horizon_p=test.p_value,
        fixed_horizon_ci=(test.ci_low, test.ci_high),
        always_valid_p=running.p_value,
        e_value=stats.e_value(test.diff, test.se, combined.n_total, cfg.alpha, cfg.n_star),
        always_valid_ci=(running.low, running.high),
        relative_lift=None if lift is None else lift.lift,
        relative_lift_ci=None if lift is None else (lift.ci_low, lift.ci_high),
        effect_size=effect,
        effect_size_kind=kind,
        minimum_detectable_effect=stats.minimum_detectable_difference(test.se, cfg.alpha),
        required_n_per_arm=stats.required_n_per_arm(effect, cfg.alpha) if effect else None,
        strata=len(strata),
        lower_is_better=cfg.is_loss,
    )


def _effect_size(
    strata: list[tuple[stats.Arm, stats.Arm]], ma: float, mb: float, cfg: DecisionConfig
) -> tuple[float, str]:
    if cfg.metric == "accuracy":
        return stats.cohens_h(min(1.0, max(0.0, ma)), min(1.0, max(0.0, mb))), "cohens_h"
    n_a, n_b = sum(a.n for a, _ in strata), sum(b.n for _, b in strata)
    var_a = sum((a.n - 1) * a.var for a, _ in strata) / max(1, n_a - len(strata))
    var_b = sum((b.n - 1) * b.var for _, b in strata) / max(1, n_b - len(strata))
    return stats.cohens_d(ma, var_a, n_a, mb, var_b, n_b), "cohens_d"


def srm_result(s: ExperimentStats, cfg: DecisionConfig) -> SrmResult:
    """χ² of assigned units against each period's split, summed over periods (df add up).

    Periods whose expected counts are below ``srm_min_per_arm`` are not tested yet.
    Labelled outcomes are not tested here: label-rate differences are the label-rate
    guardrail's, within its margin.
    """
    observed, shares = [], []
    for key, t in s.strata.items():
        share, n = float(key), t.champion.assigned + t.challenger.assigned
        if min(n * (1 - share), n * share) >= cfg.srm_min_per_arm:
            observed.append((float(t.champion.assigned), float(t.challenger.assigned)))
            shares.append(share)
    p = stats.srm_chi_square(observed, shares)
    n_total = sum(a + b for a, b in observed)
    expected = sum((a + b) * sh for (a, b), sh in zip(observed, shares, strict=True))
    return SrmResult(
        assigned_p=p,
        chi_square_df=len(observed),
        expected_challenger_share=expected / n_total if n_total else 0.0,
        observed_challenger_share=sum(b for _, b in observed) / n_total if n_total else 0.0,
        mismatch=p < cfg.srm_alpha,
    )


def minimum_sample_met(s: ExperimentStats, cfg: DecisionConfig) -> bool:
    """Whether each arm has enough closed outcomes (and correct and wrong ones) for a verdict."""
    for arm in (s.champion, s.challenger):
        if cfg.metric != "accuracy":
            if metric_count(arm, cfg) < cfg.min_labelled_per_arm:
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
    # A harmed guardrail rolls back whatever else is true: keeping the champion is safe
    # even when the split is suspect or the primary metric has no sample yet (a challenger
    # that fails every request never gets one).
    harmed = tuple(f"guardrail_harmed:{g.name}" for g in guardrails if g.harmed)
    if harmed:
        return "rollback", harmed
    if srm.mismatch:
        if _at_max(s, cfg):
            return "inconclusive", ("max_sample", "sample_ratio_mismatch_assigned")
        return "hold", ("sample_ratio_mismatch_assigned",)
    if primary is None or not minimum_sample_met(s, cfg):
        return "continue", ("minimum_sample_not_reached",)
    # Improvement: B − A, or A − B for a loss (lower is better); > 0 favours the challenger.
    low, high = primary.improvement_ci
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
    n = [metric_count(arm, cfg) for arm in (s.champion, s.challenger)]
    return min(n) >= cfg.max_labelled_per_arm
