"""One-sided guardrails, each estimated within allocation periods and combined.

A guardrail harms when its always-valid lower bound passes the margin and is
non-inferior when its upper bound stays below it. Margins may be relative to the
champion's level with an absolute floor (errors), or absolute (label rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from services.router.core import stats
from services.router.core.arms import LATENCY_EDGES_MS, ArmStats, ExperimentStats, StratumStats
from services.router.core.results import (
    DecisionConfig,
    GuardrailResult,
    RunningBounds,
    rate_margin,
    running_interval,
)

#: Events and units of the champion, then of the challenger, in one stratum.
RatePair = tuple[tuple[int, int], tuple[int, int]]


def rate_var(events: float, units: float) -> float:
    """Variance of a rate's estimate, smoothed so that 0 or all events is not certainty.

    >>> rate_var(0, 100) > 0
    True
    """
    smoothed = min(1.0, (events + 0.5) / (units + 1))
    return smoothed * (1 - smoothed) / units if smoothed < 1 else 0.25 / (units + 1) ** 2


def _verdict(
    name: str,
    worse: float,
    se: float,
    n_total: int,
    margin: float,
    ready: bool,
    cfg: DecisionConfig,
    bounds: dict[str, RunningBounds],
) -> GuardrailResult:
    running = running_interval(name, worse, se, n_total, cfg, bounds, ready)
    return GuardrailResult(
        name=name,
        deterioration=worse,
        lower=running.low,
        upper=running.high,
        margin=margin,
        harmed=ready and running.low > margin,
        non_inferior=ready and running.high < margin,
    )


def stratified_rate_guardrail(
    name: str,
    pairs: Sequence[RatePair],
    margin_of: Callable[[float], float],
    higher_is_worse: bool,
    cfg: DecisionConfig,
    bounds: dict[str, RunningBounds],
) -> GuardrailResult | None:
    """A rate compared within each period (both arms equally old there) and combined.

    ``margin_of`` turns the champion's (weighted) rate into the tolerated deterioration.
    """
    kept = [((xa, na), (xb, nb)) for (xa, na), (xb, nb) in pairs if na > 0 and nb > 0]
    if not kept:
        return None
    weights = stats.stratum_weights(
        [(stats.Arm(0.0, 0.0, na), stats.Arm(0.0, 0.0, nb)) for (_, na), (_, nb) in kept]
    )
    rates = [(min(1.0, xa / na), min(1.0, xb / nb)) for (xa, na), (xb, nb) in kept]
    sign = 1.0 if higher_is_worse else -1.0
    worse = sign * sum(w * (rb - ra) for w, (ra, rb) in zip(weights, rates, strict=True))
    var = sum(
        w * w * (rate_var(xa, na) + rate_var(xb, nb))
        for w, ((xa, na), (xb, nb)) in zip(weights, kept, strict=True)
    )
    champion = sum(w * ra for w, (ra, _) in zip(weights, rates, strict=True))
    n_a, n_b = sum(na for (_, na), _ in kept), sum(nb for _, (_, nb) in kept)
    ready = min(n_a, n_b) >= cfg.min_labelled_per_arm
    result = _verdict(
        name, worse, math.sqrt(var), n_a + n_b, margin_of(champion), ready, cfg, bounds
    )
    detail = {"champion": champion, "challenger": champion + sign * worse, "strata": len(kept)}
    return result.model_copy(update={"detail": detail})


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


def _log_latency(arm: ArmStats) -> stats.Arm:
    return stats.shifted_mean_var(arm.latency_n, arm.log_latency_sum, arm.log_latency_sumsq, 0.0)


def latency_guardrail(
    s: ExperimentStats, cfg: DecisionConfig, bounds: dict[str, RunningBounds]
) -> GuardrailResult | None:
    """Log-mean latency within each period, combined; a far slower p95 also harms."""
    strata = [
        (_log_latency(t.champion), _log_latency(t.challenger))
        for t in s.strata.values()
        if t.champion.latency_n >= 2 and t.challenger.latency_n >= 2
    ]
    if not strata:
        return None
    combined = stats.stratified_difference(strata)
    n_a, n_b = sum(a.n for a, _ in strata), sum(b.n for _, b in strata)
    ready = min(n_a, n_b) >= cfg.min_labelled_per_arm
    margin = latency_margin(math.exp(combined.mean_a), cfg)
    result = _verdict(
        "log_latency", combined.diff, combined.se, n_a + n_b, margin, ready, cfg, bounds
    )
    pa, pb = p95_ms(s.champion), p95_ms(s.challenger)
    ratio = pb / pa if pa > 0 else 1.0
    # A p95 far above the champion's harms only when the slow-down is also significant,
    # and more than the floor in milliseconds.
    slower_p95 = ratio > cfg.p95_ratio_limit and pb - pa > cfg.latency_floor_ms
    harmed = result.harmed or (ready and slower_p95 and result.lower > 0)
    detail = {"champion_p95_ms": pa, "challenger_p95_ms": pb, "p95_ratio": ratio}
    return result.model_copy(update={"harmed": harmed, "detail": detail})


def _errors(t: StratumStats) -> RatePair:
    return (t.champion.errors, t.champion.requests), (t.challenger.errors, t.challenger.requests)


def _labels(cfg: DecisionConfig) -> Callable[[StratumStats], RatePair]:
    def pair(t: StratumStats) -> RatePair:
        a, b = t.champion, t.challenger
        if cfg.is_loss:
            return (a.loss_n, a.closed), (b.loss_n, b.closed)
        if cfg.metric == "reward":
            return (a.reward_n, a.closed), (b.reward_n, b.closed)
        return (a.labelled, a.closed), (b.labelled, b.closed)

    return pair


def guardrail_results(
    s: ExperimentStats, cfg: DecisionConfig, bounds: dict[str, RunningBounds]
) -> tuple[GuardrailResult, ...]:
    """The guardrails that have data: error rate, latency, label rate (closed outcomes)."""
    results: list[GuardrailResult | None] = []
    # Until an arm has failed at all there is nothing to compare, and a guardrail on
    # 0 vs 0 would only delay verdicts.
    if s.champion.errors or s.challenger.errors:
        results.append(
            stratified_rate_guardrail(
                "error_rate",
                [_errors(t) for t in s.strata.values()],
                lambda p: rate_margin(p, cfg.error_rate_margin, cfg.error_rate_relative_margin),
                True,
                cfg,
                bounds,
            )
        )
    results.append(latency_guardrail(s, cfg, bounds))
    results.append(
        stratified_rate_guardrail(
            "label_rate",
            [_labels(cfg)(t) for t in s.strata.values()],
            lambda p: rate_margin(p, cfg.label_rate_margin, cfg.label_rate_relative_margin),
            False,
            cfg,
            bounds,
        )
    )
    return tuple(r for r in results if r is not None)
