"""A/B statistics of the router, as pure functions of sufficient statistics.

Arm A is the champion (control), arm B the challenger. Decisions use the
absolute difference B − A; the relative lift is reported beside it. Fixed-horizon
p-values are computed for reference only: they are not valid when the data are
looked at repeatedly. The always-valid interval is the asymptotic confidence
sequence of Waudby-Smith et al. (2023) as GrowthBook implements it, which equals
the normal-mixture mSPRT of Johari et al. (2017) with mixing variance τ² = 2Vρ².
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt
from scipy import stats

#: A float, or an array of them: the sequential formulas work element-wise.
Num = TypeVar("Num", float, npt.NDArray[np.float64])


@dataclass(frozen=True)
class TwoSample:
    """A difference B − A with its standard error and a fixed-horizon test."""

    diff: float
    se: float
    statistic: float
    p_value: float
    ci_low: float
    ci_high: float
    df: float = math.inf


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2))


def _two_sided_normal(diff: float, se: float, alpha: float) -> TwoSample:
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    p = float(2 * stats.norm.sf(abs(z)))
    half = _z(alpha) * se
    return TwoSample(diff, se, z, p, diff - half, diff + half)


def diff_proportions(x_a: int, n_a: int, x_b: int, n_b: int, alpha: float = 0.05) -> TwoSample:
    """Wald test and interval for p_B − p_A with the unpooled standard error.

    Examples
    --------
    >>> r = diff_proportions(80, 100, 90, 100)
    >>> round(r.diff, 3), round(r.se, 4), round(r.statistic, 3), round(r.p_value, 4)
    (0.1, 0.05, 2.0, 0.0455)
    """
    p_a, p_b = x_a / n_a, x_b / n_b
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    return _two_sided_normal(p_b - p_a, se, alpha)


def welch(
    mean_a: float,
    var_a: float,
    n_a: int,
    mean_b: float,
    var_b: float,
    n_b: int,
    alpha: float = 0.05,
) -> TwoSample:
    """Welch's t-test and interval for μ_B − μ_A (sample variances, ddof = 1).

    Examples
    --------
    >>> r = welch(1.0, 1.0, 50, 1.5, 4.0, 40)
    >>> round(r.statistic, 3), round(r.df, 1), round(r.p_value, 4)
    (1.443, 54.4, 0.1546)
    """
    va, vb = var_a / n_a, var_b / n_b
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1)) if se > 0 else math.inf
    diff = mean_b - mean_a
    t = diff / se if se > 0 else 0.0
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return TwoSample(diff, se, t, p, diff - half, diff + half, df)


@dataclass(frozen=True)
class Lift:
    """Relative lift μ_B/μ_A − 1 with its delta-method interval."""

    lift: float
    se: float
    ci_low: float
    ci_high: float


def relative_lift(
    mean_a: float,
    var_a: float,
    n_a: int,
    mean_b: float,
    var_b: float,
    n_b: int,
    alpha: float = 0.05,
) -> Lift:
    """Delta-method interval for the relative lift (var = per-unit variances).

    Examples
    --------
    >>> r = relative_lift(0.8, 0.16, 100, 0.9, 0.09, 100)
    >>> round(r.lift, 4), round(r.se, 4)
    (0.125, 0.0676)
    """
    lift = mean_b / mean_a - 1
    var = var_b / (n_b * mean_a**2) + var_a * mean_b**2 / (n_a * mean_a**4)
    se = math.sqrt(var)
    half = _z(alpha) * se
    return Lift(lift, se, lift - half, lift + half)


def tuning_rho(alpha: float, n_star: float) -> float:
    """ρ of the asymptotic confidence sequence, tuned to be tightest near ``n_star`` units.

    >>> round(tuning_rho(0.05, 5000), 5)
    0.03984
    """
    two_log = -2 * math.log(alpha)
    return math.sqrt((two_log + math.log(two_log + 1)) / n_star)


def cs_half_width(se: Num, n_total: Num, alpha: float, n_star: float) -> Num:
    """Half-width of the always-valid interval for a difference with standard error ``se``.

    ``n_total`` counts the units of both arms. The interval is wider than the
    fixed-horizon one by a factor that grows slowly with ``n_total``. Works
    element-wise on arrays too (the simulations use that).

    Examples
    --------
    >>> round(cs_half_width(0.05, 200, 0.05, 5000), 4)
    0.255
    """
    rho2 = tuning_rho(alpha, n_star) ** 2
    n = np.asarray(n_total, dtype=float)
    log_term = np.log(np.sqrt(n * rho2 + 1) / alpha)
    width = np.asarray(se) * np.sqrt(n) * np.sqrt(2 * (n * rho2 + 1) / (n**2 * rho2) * log_term)
    return cast(Num, width if width.ndim else float(width))


def e_value(diff: Num, se: Num, n_total: Num, alpha: float, n_star: float) -> Num:
    """The mixture likelihood ratio Λ against "no difference": evidence that B ≠ A.

    Its reciprocal, capped at 1, is the always-valid p-value of this look.

    >>> round(e_value(0.1, 0.05, 200, 0.05, 5000), 3)
    1.411
    """
    rho2 = tuning_rho(alpha, n_star) ** 2
    n = np.asarray(n_total, dtype=float)
    d, s = np.asarray(diff, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z2 = np.where(s > 0, (d / np.where(s > 0, s, 1.0)) ** 2, np.where(d == 0, 0.0, np.inf))
    with np.errstate(over="ignore"):  # overwhelming evidence: Λ = inf, p = 0
        value = np.exp(z2 * (n * rho2 / (n * rho2 + 1)) / 2) / np.sqrt(n * rho2 + 1)
    return cast(Num, value if value.ndim else float(value))


def always_valid_p(diff: Num, se: Num, n_total: Num, alpha: float, n_star: float) -> Num:
    """The always-valid p-value of one look: min(1, 1/Λ). Keep a running minimum across looks.

    >>> round(always_valid_p(0.1, 0.05, 200, 0.05, 5000), 3)
    0.709
    """
    value = np.minimum(1.0, 1.0 / np.asarray(e_value(diff, se, n_total, alpha, n_star)))
    return cast(Num, value if value.ndim else float(value))


@dataclass(frozen=True)
class Arm:
    """One arm's sample in one stratum: mean, per-unit variance (ddof = 1) and size."""

    mean: float
    var: float
    n: int


@dataclass(frozen=True)
class Stratified:
    """A difference B − A combined over strata, with what the tests and lift need."""

    diff: float
    se: float
    df: float
    mean_a: float
    mean_b: float
    var_mean_a: float
    var_mean_b: float
    n_total: int


def stratum_weights(strata: Sequence[tuple[Arm, Arm]]) -> list[float]:
    """Weights of the strata: each one's information n_A·n_B/(n_A+n_B), normalised.

    They depend on the counts only, never on the outcomes, and are the
    Cochran–Mantel–Haenszel weights of a difference.

    >>> [round(w, 3) for w in stratum_weights([(Arm(0, 0, 95), Arm(0, 0, 5)),
    ...                                         (Arm(0, 0, 50), Arm(0, 0, 50))])]
    [0.16, 0.84]
    """
    info = [a.n * b.n / (a.n + b.n) for a, b in strata]
    total = sum(info)
    return [i / total for i in info]


def stratified_difference(strata: Sequence[tuple[Arm, Arm]]) -> Stratified:
    """The stratified difference Σ wₛ(ȳ_Bₛ − ȳ_Aₛ) and its variance Σ wₛ²·varₛ.

    Degrees of freedom are Welch–Satterthwaite's over every stratum's two
    variance terms; with one stratum everything reduces to Welch's test
    (and to the unpooled Wald test when the variances are p(1 − p)).

    Parameters
    ----------
    strata
        ``(champion, challenger)`` samples of each allocation period; each arm needs n ≥ 2.

    Examples
    --------
    >>> one = stratified_difference([(Arm(0.8, 0.16, 100), Arm(0.9, 0.09, 100))])
    >>> round(one.diff, 3), round(one.se, 4)
    (0.1, 0.05)
    >>> two = stratified_difference([(Arm(0.78, 0.17, 950), Arm(0.78, 0.17, 50)),
    ...                              (Arm(0.82, 0.15, 500), Arm(0.82, 0.15, 500))])
    >>> round(two.diff, 12), round(two.mean_a, 4)  # pooled arms would differ by 0.0226
    (0.0, 0.8136)
    """
    weights = stratum_weights(strata)
    terms_a = [w * w * a.var / a.n for w, (a, _) in zip(weights, strata, strict=True)]
    terms_b = [w * w * b.var / b.n for w, (_, b) in zip(weights, strata, strict=True)]
    var = sum(terms_a) + sum(terms_b)
    denominator = sum(
        ta * ta / (a.n - 1) + tb * tb / (b.n - 1)
        for ta, tb, (a, b) in zip(terms_a, terms_b, strata, strict=True)
    )
    mean_a = sum(w * a.mean for w, (a, _) in zip(weights, strata, strict=True))
    mean_b = sum(w * b.mean for w, (_, b) in zip(weights, strata, strict=True))
    return Stratified(
        diff=mean_b - mean_a,
        se=math.sqrt(var),
        df=var * var / denominator if denominator > 0 else math.inf,
        mean_a=mean_a,
        mean_b=mean_b,
        var_mean_a=sum(terms_a),
        var_mean_b=sum(terms_b),
        n_total=sum(a.n + b.n for a, b in strata),
    )


def stratified_test(combined: Stratified, alpha: float = 0.05, normal: bool = True) -> TwoSample:
    """Fixed-horizon test and interval of a stratified difference (z, or t with its df).

    >>> r = stratified_test(stratified_difference([(Arm(1.0, 1.0, 50), Arm(1.5, 4.0, 40))]),
    ...                     normal=False)
    >>> round(r.statistic, 3), round(r.df, 1), round(r.p_value, 4)  # Welch's test
    (1.443, 54.4, 0.1546)
    """
    if normal:
        return _two_sided_normal(combined.diff, combined.se, alpha)
    diff, se, df = combined.diff, combined.se, combined.df
    t = diff / se if se > 0 else 0.0
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return TwoSample(diff, se, t, p, diff - half, diff + half, df)


def shifted_mean_var(n: int, shifted_sum: float, shifted_sumsq: float, shift: float) -> Arm:
    """Mean and sample variance from sums of (x − shift) and (x − shift)².

    Summing raw squares loses every digit of the variance once the values sit
    far from zero (rewards near 1e8); sums around a shift near the mean keep them.

    >>> xs = [1e8 + 1, 1e8 + 2, 1e8 + 3]
    >>> arm = shifted_mean_var(3, sum(x - 1e8 for x in xs), sum((x - 1e8) ** 2 for x in xs), 1e8)
    >>> arm.mean, arm.var
    (100000002.0, 1.0)
    """
    if n == 0:
        return Arm(shift, 0.0, 0)
    centred = shifted_sum / n
    var = max(0.0, (shifted_sumsq - n * centred * centred) / (n - 1)) if n > 1 else 0.0
    return Arm(shift + centred, var, n)


def srm_chi_square(observed: Sequence[tuple[float, float]], share: Sequence[float]) -> float:
    """SRM p-value over several periods: Σ of each period's Pearson χ², df = number of periods.

    Opposite imbalances in two periods add up instead of cancelling.

    >>> round(srm_chi_square([(480, 520)], [0.5]), 4)  # one period: Pearson's test
    0.2059
    >>> srm_chi_square([(930, 70), (430, 570)], [0.05, 0.5]) < 1e-6  # pooled it would pass
    True
    """
    chi2 = 0.0
    for (a, b), s in zip(observed, share, strict=True):
        n = a + b
        expected = (n * (1 - s), n * s)
        chi2 += sum((o - e) ** 2 / e for o, e in zip((a, b), expected, strict=True))
    return float(stats.chi2.sf(chi2, len(observed))) if observed else 1.0


def srm_p_value(observed: Sequence[float], expected: Sequence[float]) -> float:
    """Pearson χ² p-value of observed counts against expected counts (same total).

    >>> round(srm_p_value([480, 520], [500, 500]), 4)
    0.2059
    """
    if sum(observed) <= 0 or any(e <= 0 for e in expected):
        return 1.0
    return float(stats.chisquare(list(observed), list(expected)).pvalue)


def cohens_h(p_a: float, p_b: float) -> float:
    """Cohen's h = 2·asin√p_B − 2·asin√p_A.

    >>> round(cohens_h(0.8, 0.9), 4)
    0.2838
    """
    return 2 * math.asin(math.sqrt(p_b)) - 2 * math.asin(math.sqrt(p_a))


def cohens_d(mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int) -> float:
    """Cohen's d with the pooled standard deviation.

    >>> round(cohens_d(1.0, 1.0, 50, 1.5, 4.0, 40), 4)
    0.3276
    """
    pooled = ((n_a - 1) * var_a + (n_b - 1) * var_b) / (n_a + n_b - 2)
    return (mean_b - mean_a) / math.sqrt(pooled) if pooled > 0 else 0.0


def required_n_per_arm(effect: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Units per arm a two-sided fixed-horizon test needs to detect standardised ``effect``.

    >>> round(required_n_per_arm(0.2838))
    195
    """
    return 2 * ((_z(alpha) + float(stats.norm.ppf(power))) / effect) ** 2


def minimum_detectable_effect(n_per_arm: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest standardised effect (h or d) detected with ``power`` at ``n_per_arm`` per arm.

    >>> round(minimum_detectable_effect(195), 4)
    0.2837
    """
    return (_z(alpha) + float(stats.norm.ppf(power))) * math.sqrt(2 / n_per_arm)


def minimum_detectable_difference(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest absolute difference a fixed-horizon test at this standard error detects.

    It replaces "observed power", which is only a transform of the p-value.

    >>> round(minimum_detectable_difference(0.05), 4)
    0.1401
    """
    return (_z(alpha) + float(stats.norm.ppf(power))) * se


def mde_of_proportion(p_a: float, effect_h: float) -> float:
    """The absolute difference in proportion that Cohen's h ``effect_h`` means at ``p_a``.

    >>> round(mde_of_proportion(0.8, 0.2838), 3)
    0.1
    """
    angle = min(math.pi, 2 * math.asin(math.sqrt(p_a)) + effect_h)
    return math.sin(angle / 2) ** 2 - p_a
