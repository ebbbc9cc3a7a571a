"""The router's statistics against statsmodels/scipy, and its error rates by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats import proportion as smp
from statsmodels.stats._delta_method import NonlinearDeltaCov
from statsmodels.stats.power import NormalIndPower

from services.router.core import stats
from services.router.core.decision import (
    ArmStats,
    DecisionConfig,
    ExperimentStats,
    RunningBounds,
    evaluate,
)

CASES = [(80, 100, 90, 100), (412, 500, 380, 480), (55, 70, 1650, 2000), (30, 200, 41, 190)]


@pytest.mark.parametrize(("x_a", "n_a", "x_b", "n_b"), CASES)
def test_difference_of_proportions_matches_statsmodels_wald(
    x_a: int, n_a: int, x_b: int, n_b: int
) -> None:
    ours = stats.diff_proportions(x_a, n_a, x_b, n_b)
    theirs = smp.test_proportions_2indep(x_b, n_b, x_a, n_a, method="wald", compare="diff")
    low, high = smp.confint_proportions_2indep(x_b, n_b, x_a, n_a, method="wald", compare="diff")
    assert ours.diff == pytest.approx(theirs.diff, rel=1e-12)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((low, high), rel=1e-9)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(1.0, 1.0, 60), rng.normal(1.3, 2.5, 45)
    ours = stats.welch(a.mean(), a.var(ddof=1), a.size, b.mean(), b.var(ddof=1), b.size)
    theirs = sps.ttest_ind(b, a, equal_var=False)
    ci = theirs.confidence_interval(0.95)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
    assert ours.df == pytest.approx(theirs.df, rel=1e-9)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_relative_lift_matches_statsmodels_delta_method() -> None:
    ma, va, na, mb, vb, nb = 0.8, 0.16, 400, 0.86, 0.1204, 380
    ours = stats.relative_lift(ma, va, na, mb, vb, nb)
    delta = NonlinearDeltaCov(
        lambda p: np.array([p[1] / p[0] - 1]), np.array([ma, mb]), np.diag([va / na, vb / nb])
    )
    assert ours.lift == pytest.approx(mb / ma - 1)
    assert ours.se == pytest.approx(float(np.sqrt(delta.cov()[0, 0])), rel=1e-6)
    low, high = delta.conf_int(alpha=0.05)[0]
    assert (ours.ci_low, ours.ci_high) == pytest.approx((low, high), rel=1e-6)


def test_effect_sizes_and_power_match_statsmodels() -> None:
    h = stats.cohens_h(0.80, 0.85)
    assert h == pytest.approx(smp.proportion_effectsize(0.85, 0.80), rel=1e-12)
    power = NormalIndPower()
    n = power.solve_power(effect_size=h, alpha=0.05, power=0.8, ratio=1.0)
    assert stats.required_n_per_arm(h) == pytest.approx(n, rel=1e-4)
    # The minimum detectable difference at a standard error is 80 % power's effect there.
    mdd = stats.minimum_detectable_difference(0.02)
    assert power.power(mdd / 0.02, 2, 0.05, ratio=1.0) == pytest.approx(0.8, rel=1e-4)
    mde = power.solve_power(nobs1=500, alpha=0.05, power=0.8, ratio=1.0)
    assert stats.minimum_detectable_effect(500) == pytest.approx(mde, rel=1e-4)
    assert stats.mde_of_proportion(0.80, h) == pytest.approx(0.05, abs=1e-12)


def test_cohens_d_uses_the_pooled_standard_deviation() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 50), rng.normal(0.5, 2, 30)
    pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / 78)
    ours = stats.cohens_d(a.mean(), a.var(ddof=1), a.size, b.mean(), b.var(ddof=1), b.size)
    assert ours == pytest.approx((b.mean() - a.mean()) / pooled, rel=1e-12)


def test_srm_is_pearsons_chi_square() -> None:
    observed, expected = (940, 60), (900.0, 100.0)
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    assert stats.srm_p_value(observed, expected) == pytest.approx(sps.chi2.sf(chi2, 1))
    assert stats.srm_p_value(observed, expected) < 0.001


def test_confidence_sequence_is_the_normal_mixture_msprt() -> None:
    # Johari et al.: n per arm, V = σ_A² + σ_B², mixing variance τ² = 2Vρ².
    n, var_sum, diff, alpha, n_star = 700, 0.3, 0.04, 0.05, 2000.0
    tau2 = 2 * var_sum * stats.tuning_rho(alpha, n_star) ** 2
    shrink = var_sum + n * tau2
    msprt = math.sqrt(var_sum / shrink) * math.exp(n**2 * tau2 * diff**2 / (2 * var_sum * shrink))
    half = math.sqrt(
        var_sum * shrink / (n**2 * tau2) * (2 * math.log(1 / alpha) + math.log(shrink / var_sum))
    )
    se = math.sqrt(var_sum / n)
    assert stats.e_value(diff, se, 2 * n, alpha, n_star) == pytest.approx(msprt, rel=1e-9)
    assert stats.cs_half_width(se, 2 * n, alpha, n_star) == pytest.approx(half, rel=1e-9)
    assert stats.always_valid_p(diff, se, 2 * n, alpha, n_star) == pytest.approx(1 / msprt)


def test_always_valid_interval_is_wider_than_the_fixed_horizon_one() -> None:
    fixed = 1.959964 * 0.02
    assert stats.cs_half_width(0.02, 1000, 0.05, 2000) > fixed


def _simulate(
    p_a: float, p_b: float, *, experiments: int, looks: int, batch: int, seed: int
) -> tuple[float, float, np.ndarray]:
    """Share promoted by the always-valid rule and by naive repeated z-tests, over all looks."""
    rng = np.random.default_rng(seed)
    n = batch * np.arange(1, looks + 1, dtype=float)
    a = rng.binomial(batch, p_a, (experiments, looks)).cumsum(axis=1) / n
    b = rng.binomial(batch, p_b, (experiments, looks)).cumsum(axis=1) / n
    se = np.sqrt(a * (1 - a) / n + b * (1 - b) / n)
    half = stats.cs_half_width(se, np.broadcast_to(2 * n, se.shape).copy(), 0.05, 2000.0)
    counted = n >= 100  # the minimum sample before any verdict (and before intersecting)
    running_low = np.maximum.accumulate(np.where(counted, b - a - half, -np.inf), axis=1)
    always_valid = ((running_low > 0) & counted).any(axis=1)
    naive = (((b - a) / se > sps.norm.ppf(0.975)) & counted).any(axis=1)
    return float(always_valid.mean()), float(naive.mean()), running_low


def test_a_a_looked_at_after_every_batch_keeps_false_promotions_below_alpha() -> None:
    always_valid, naive, _ = _simulate(0.8, 0.8, experiments=2000, looks=40, batch=50, seed=11)
    assert always_valid <= 0.05
    # The same data tested naively at every look promotes far more often than α.
    assert naive > 0.10


def test_a_b_with_a_real_effect_promotes_with_the_expected_power() -> None:
    looks, batch = 40, 50
    promoted, _, _ = _simulate(0.80, 0.85, experiments=2000, looks=looks, batch=batch, seed=12)
    # Lower bound on power: the last look alone crossing (earlier looks only add to it).
    n_max = looks * batch
    se = math.sqrt(0.8 * 0.2 / n_max + 0.85 * 0.15 / n_max)
    half = stats.cs_half_width(se, 2 * n_max, 0.05, 2000.0)
    expected = float(sps.norm.cdf((0.05 - half) / se))
    assert expected > 0.7
    assert promoted >= expected - 3 * math.sqrt(expected * (1 - expected) / 2000)


def test_evaluate_agrees_with_the_vectorised_rule_look_by_look() -> None:
    rng = np.random.default_rng(5)
    config = DecisionConfig(min_labelled_per_arm=100, min_correct_per_arm=0, min_wrong_per_arm=0)
    for _ in range(5):
        bounds: dict[str, RunningBounds] = {}
        xa = xb = n = 0
        low = -math.inf
        for _look in range(20):
            n += 50
            xa += int(rng.binomial(50, 0.8))
            xb += int(rng.binomial(50, 0.84))
            decision = evaluate(_arms(xa, xb, n), config, bounds)
            bounds = decision.bounds
            test = stats.diff_proportions(xa, n, xb, n)
            look_low = test.diff - stats.cs_half_width(test.se, 2 * n, 0.05, 2000.0)
            low = max(low, look_low) if n >= 100 else low
            assert decision.primary is not None
            shown = low if n >= 100 else look_low
            assert decision.primary.always_valid_ci[0] == pytest.approx(shown)
            assert (decision.action == "promote") == (n >= 100 and low > 0)


def _arms(correct_a: int, correct_b: int, n: int) -> ExperimentStats:
    def arm(correct: int) -> ArmStats:
        return ArmStats(assigned=n, closed=n, labelled=n, correct=correct)

    return ExperimentStats.single(arm(correct_a), arm(correct_b), 0.5)


@pytest.mark.parametrize(("x_a", "n_a", "x_b", "n_b"), CASES)
def test_one_stratum_is_the_unstratified_wald_test(x_a: int, n_a: int, x_b: int, n_b: int) -> None:
    pa, pb = x_a / n_a, x_b / n_b
    combined = stats.stratified_difference(
        [(stats.Arm(pa, pa * (1 - pa), n_a), stats.Arm(pb, pb * (1 - pb), n_b))]
    )
    ours = stats.stratified_test(combined)
    stat, p = smp.test_proportions_2indep(x_b, n_b, x_a, n_a, method="wald", compare="diff")
    assert ours.statistic == pytest.approx(stat, rel=1e-12)
    assert ours.p_value == pytest.approx(p, rel=1e-9)


def test_one_stratum_of_numbers_is_welchs_test() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.normal(0, 1, 40), rng.normal(0.4, 2, 25)
    arms = [stats.Arm(float(x.mean()), float(x.var(ddof=1)), x.size) for x in (a, b)]
    ours = stats.stratified_test(stats.stratified_difference([(arms[0], arms[1])]), normal=False)
    scipy = sps.ttest_ind(b, a, equal_var=False)
    assert ours.statistic == pytest.approx(scipy.statistic, rel=1e-12)
    assert ours.p_value == pytest.approx(scipy.pvalue, rel=1e-9)


def test_stratified_difference_is_the_weighted_sum_of_within_period_differences() -> None:
    # Both arms move 0.78 → 0.82 together; the challenger's outcomes come mostly late.
    early = (stats.Arm(0.78, 0.78 * 0.22, 950), stats.Arm(0.78, 0.78 * 0.22, 50))
    late = (stats.Arm(0.82, 0.82 * 0.18, 500), stats.Arm(0.82, 0.82 * 0.18, 500))
    combined = stats.stratified_difference([early, late])
    assert combined.diff == pytest.approx(0.0, abs=1e-15)
    w = np.array([950 * 50 / 1000, 500 * 500 / 1000])
    w /= w.sum()
    var = w[0] ** 2 * (0.78 * 0.22 / 950 + 0.78 * 0.22 / 50) + w[1] ** 2 * (
        0.82 * 0.18 / 500 + 0.82 * 0.18 / 500
    )
    assert combined.se == pytest.approx(math.sqrt(var), rel=1e-12)


def test_srm_sums_each_periods_chi_square_so_opposite_imbalances_do_not_cancel() -> None:
    periods, shares = [(930.0, 70.0), (430.0, 570.0)], [0.05, 0.5]
    chi2 = sum(
        sps.chisquare([a, b], [(a + b) * (1 - s), (a + b) * s]).statistic
        for (a, b), s in zip(periods, shares, strict=True)
    )
    assert stats.srm_chi_square(periods, shares) == pytest.approx(sps.chi2.sf(chi2, 2), rel=1e-12)
    assert stats.srm_chi_square([(950.0, 50.0)], [0.05]) == pytest.approx(1.0)


def test_shifted_sums_keep_the_variance_of_rewards_near_1e8() -> None:
    rng = np.random.default_rng(9)
    rewards = 1e8 + rng.normal(0, 1, 500)
    shift = float(rewards[0])
    arm = stats.shifted_mean_var(
        rewards.size, float((rewards - shift).sum()), float(((rewards - shift) ** 2).sum()), shift
    )
    assert arm.mean == pytest.approx(float(rewards.mean()), rel=1e-15)
    assert arm.var == pytest.approx(float(rewards.var(ddof=1)), rel=1e-9)
    raw = stats.shifted_mean_var(rewards.size, rewards.sum(), (rewards**2).sum(), 0.0)
    assert abs(raw.var - rewards.var(ddof=1)) > 0.01  # what raw sums of squares lose


def test_reward_experiments_near_1e8_are_welchs_test_on_the_shifted_sums() -> None:
    rng = np.random.default_rng(10)
    a, b = 1e8 + rng.normal(0, 1, 300), 1e8 + rng.normal(0.2, 1.5, 200)
    shift = float(a[0])

    def arm(x: np.ndarray) -> ArmStats:
        d = x - shift
        return ArmStats(reward_n=x.size, reward_sum=float(d.sum()), reward_sumsq=float(d @ d))

    s = ExperimentStats.single(arm(a), arm(b), 0.5).model_copy(update={"reward_shift": shift})
    primary = evaluate(s, DecisionConfig(metric="reward"), {}).primary
    assert primary is not None
    scipy = sps.ttest_ind(b, a, equal_var=False)
    assert primary.fixed_horizon_p == pytest.approx(scipy.pvalue, rel=1e-6)
    assert primary.diff == pytest.approx(float(b.mean() - a.mean()), rel=1e-6)
