"""Looks at a running experiment: ramp stages, holds, verdicts, and the report built from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.router.core import Experiment
from services.router.core.decision import (
    ArmStats,
    DecisionConfig,
    ExperimentStats,
    StratumStats,
    guardrail_results,
)
from services.router.core.experiment import ExperimentPlan
from services.router.core.lifecycle import look, look_due, state_changed
from services.router.core.outcomes import Closing, OutcomeWindow, close_increments
from services.router.core.report import build_report, look_point
from services.router.core.tally import (
    assignment_increments,
    failure_increments,
    label_of,
    pending_of,
    request_increments,
    stats_from_counters,
)
from shared.events import FeedbackReceived, PredictionFailed, PredictionLogged

OPENED = datetime(2026, 1, 1, tzinfo=UTC)
PLAN = ExperimentPlan(
    shares=(0.1, 0.5),
    stage_min_labelled=50,
    look_every=10,
    decision=DecisionConfig(min_labelled_per_arm=100),
)


def running(step: int = 0, **changes: object) -> Experiment:
    experiment = Experiment(
        experiment_id="exp-1",
        model_name="m",
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=PLAN.shares[step],
        ramp_step=step,
        opened_at=OPENED,
        plan=PLAN,
    )
    return experiment.model_copy(update=changes)


def stats(
    n_a: int, acc_a: float, n_b: int, acc_b: float, share: float = 0.5, labelled: bool = True
) -> ExperimentStats:
    def arm(n: int, acc: float) -> ArmStats:
        return ArmStats(
            assigned=n, requests=n, closed=n, labelled=n if labelled else 0, correct=round(n * acc)
        )

    return ExperimentStats.single(arm(n_a, acc_a), arm(n_b, acc_b), share)


NOW = OPENED + timedelta(hours=1)


def test_before_the_minimum_sample_the_ramp_advances_but_nothing_is_decided() -> None:
    after = look(running(0), stats(540, 0.8, 60, 0.8, share=0.1), NOW)
    assert after.decision == "continue"
    assert "minimum_sample_not_reached" in after.reasons
    assert (after.status, after.ramp_step, after.challenger_share) == ("running", 1, 0.5)
    assert after.stage_base_labelled == 60
    assert state_changed(running(0), after)


def test_a_stage_waits_for_its_minimum_of_challenger_outcomes() -> None:
    after = look(running(0), stats(360, 0.8, 40, 0.8, share=0.1), NOW)
    assert (after.ramp_step, after.challenger_share) == (0, 0.1)
    assert not state_changed(running(0), after)


def test_a_clearly_better_challenger_is_promoted_only_at_the_last_stage() -> None:
    data = stats(1500, 0.80, 1500, 0.88)
    ramping = look(running(0), data, NOW)
    assert ramping.decision == "promote"
    assert ramping.status == "running"
    assert ramping.ramp_step == 1
    final = look(running(1), data, NOW)
    assert final.status == "promoted"
    assert final.challenger_share == 0.0
    assert final.actions_pending
    assert final.concluded_at == NOW


def test_a_clearly_worse_challenger_is_rolled_back_at_any_stage() -> None:
    after = look(running(0), stats(1500, 0.85, 1500, 0.75), NOW)
    assert (after.status, after.decision, after.reasons) == (
        "rolled_back",
        "rollback",
        ("primary_worse",),
    )
    assert after.actions_pending


def test_sample_ratio_mismatch_holds_without_any_action() -> None:
    # 50 % configured, 30 % observed: the split is broken, so no verdict is trusted.
    data = stats(1400, 0.80, 600, 0.90, share=0.5)
    after = look(running(1), data, NOW)
    assert after.decision == "hold"
    assert after.status == "running"
    assert after.reasons == ("sample_ratio_mismatch_assigned",)
    assert state_changed(running(1), after)


def test_without_a_verdict_past_the_maximum_duration_the_experiment_is_inconclusive() -> None:
    late = OPENED + timedelta(seconds=PLAN.max_duration_s + 1)
    after = look(running(1), stats(500, 0.8, 500, 0.8), late)
    assert (after.status, after.decision, after.challenger_share) == (
        "inconclusive",
        "inconclusive",
        0.0,
    )
    assert after.reasons[0] == "max_duration"


def test_bounds_never_loosen_between_looks() -> None:
    first = look(running(1), stats(1000, 0.80, 1000, 0.84), NOW)
    second = look(first, stats(1100, 0.80, 1100, 0.80), NOW)
    assert second.bounds["accuracy"].low >= first.bounds["accuracy"].low
    assert second.bounds["accuracy"].high <= first.bounds["accuracy"].high
    assert second.bounds["accuracy"].p_value <= first.bounds["accuracy"].p_value


def test_a_look_is_due_after_each_batch_of_outcomes() -> None:
    assert look_due(running(0), stats(5, 0.8, 5, 0.8))
    assert not look_due(running(0, looked_at_labelled=5), stats(5, 0.8, 5, 0.8))
    assert not look_due(running(0, status="promoted"), stats(50, 0.8, 50, 0.8))


def _prediction(variant: str, share: float, latency: float) -> PredictionLogged:
    return PredictionLogged.model_validate(
        {
            "producer": "gateway",
            "request_id": f"r-{variant}",
            "model_name": "m",
            "version": "1",
            "variant": variant,
            "features": {},
            "predicted_class": "steady",
            "confidence": 0.9,
            "latency_ms": latency,
            "experiment_id": "exp-1",
            "challenger_share": share,
        }
    )


def test_counters_add_up_to_the_arms_statistics_per_stratum() -> None:
    counters: dict[str, float] = {}
    champion, challenger = _prediction("champion", 0.1, 2.0), _prediction("challenger", 0.1, 8.0)
    increments = [assignment_increments(e) | request_increments(e) for e in (champion, challenger)]
    feedback = FeedbackReceived(
        producer="gateway",
        request_id=challenger.request_id,
        model_name="m",
        version="2",
        variant="challenger",
        predicted_class="steady",
        true_label="steady",
        correct=True,
        experiment_id="exp-1",
        challenger_share=0.1,
    )
    closing = Closing(
        outcomes=[(pending_of(champion), None), (pending_of(challenger), label_of(feedback))],
        reward_shift=None,
    )
    closed = close_increments(closing, OutcomeWindow(seconds=60))
    assert (closed.reward_shift, closed.loss_shift) == (None, None)
    for inc in [*increments, *closed.increments.values()]:
        for key, amount in inc.items():
            counters[key] = counters.get(key, 0.0) + amount
    s = stats_from_counters(counters)
    assert list(s.strata) == ["0.1"]
    assert (s.champion.assigned, s.challenger.assigned) == (1, 1)
    assert (s.champion.closed, s.challenger.closed) == (1, 1)
    assert (s.challenger.labelled, s.challenger.correct, s.champion.labelled) == (1, 1, 0)
    assert sum(s.challenger.latency_bins) == 1
    assert s.challenger.log_latency_sum == pytest.approx(2.0794415)


def test_report_carries_the_decision_and_the_numbers_behind_it() -> None:
    data = stats(1500, 0.80, 1500, 0.88)
    final = look(running(1), data, NOW)
    point = look_point(final, data, NOW)
    assert point is not None
    report = build_report(final, data, [point])
    assert report.decision == "promote"
    assert report.primary is not None
    assert report.primary.always_valid_ci[0] > 0
    assert report.primary.fixed_horizon_note.startswith("not valid under peeking")
    assert report.primary.e_value > 1 / PLAN.decision.alpha
    assert report.arms["challenger"].accuracy == pytest.approx(0.88)
    assert report.sufficient_statistics == data
    assert report.history[0].diff == pytest.approx(0.08)


def _ramped(challenger_labelled_late: int) -> ExperimentStats:
    """Share 0.1 fully labelled; at share 0.5 the champion got half its labels in time."""
    return ExperimentStats(
        strata={
            "0.1": StratumStats(
                champion=ArmStats(assigned=900, closed=900, labelled=900, correct=700),
                challenger=ArmStats(assigned=100, closed=100, labelled=100, correct=80),
            ),
            "0.5": StratumStats(
                champion=ArmStats(assigned=500, closed=500, labelled=250, correct=200),
                challenger=ArmStats(
                    assigned=500, closed=500, labelled=challenger_labelled_late, correct=100
                ),
            ),
        }
    )


def test_label_rate_is_compared_within_each_period_so_a_ramp_is_no_harm() -> None:
    # Pooled, the challenger looks less labelled (350/600 vs 1150/1400): that is the ramp.
    (rate,) = [
        g for g in guardrail_results(_ramped(250), PLAN.decision, {}) if g.name == "label_rate"
    ]
    assert rate.deterioration == pytest.approx(0.0)
    assert not rate.harmed
    (lost,) = [
        g for g in guardrail_results(_ramped(50), PLAN.decision, {}) if g.name == "label_rate"
    ]
    info = (900 * 100 / 1000, 500 * 500 / 1000)  # n_A·n_B/(n_A + n_B) of each period
    w = info[1] / sum(info)
    assert lost.deterioration == pytest.approx(w * (0.5 - 0.1))
    assert lost.harmed


def test_a_degenerate_early_look_does_not_stay_in_the_running_interval() -> None:
    # Two outcomes per arm, all right vs all wrong: the Wald interval collapses to a point.
    early = look(running(1), stats(2, 1.0, 2, 0.0), NOW)
    assert "accuracy" not in early.bounds
    later = look(early, stats(1000, 0.80, 1000, 0.80), NOW)
    low, high = later.bounds["accuracy"].low, later.bounds["accuracy"].high
    assert low < 0 < high
    assert later.decision == "continue"


def test_error_rate_guards_once_errors_are_counted() -> None:
    base = stats(500, 0.8, 500, 0.8)
    assert "error_rate" not in {g.name for g in guardrail_results(base, PLAN.decision, {})}
    (stratum,) = base.strata.values()
    worse = stratum.challenger.model_copy(update={"errors": 60, "requests": 560})
    failing = ExperimentStats.single(stratum.champion, worse, 0.5)
    (errors,) = [g for g in guardrail_results(failing, PLAN.decision, {}) if g.name == "error_rate"]
    assert errors.harmed


def _held() -> ExperimentStats:
    return stats(1400, 0.80, 600, 0.90, share=0.5)  # 30 % of units where 50 % were routed


def test_a_hold_ends_at_the_maximum_duration_as_inconclusive_with_its_cause() -> None:
    held = look(running(1), _held(), NOW)
    assert held.decision == "hold"
    late = OPENED + timedelta(seconds=PLAN.max_duration_s + 1)
    assert look_due(held.model_copy(update={"looked_at_labelled": 10**6}), _held(), late)
    after = look(held, _held(), late)
    assert (after.status, after.decision, after.challenger_share) == (
        "inconclusive",
        "inconclusive",
        0.0,
    )
    assert after.reasons == ("max_duration", "sample_ratio_mismatch_assigned")
    assert after.actions_pending


def test_a_hold_ends_at_the_per_arm_cap() -> None:
    capped = PLAN.model_copy(
        update={"decision": PLAN.decision.model_copy(update={"max_labelled_per_arm": 500})}
    )
    after = look(running(1, plan=capped), _held(), NOW)
    assert (after.status, after.decision) == ("inconclusive", "inconclusive")
    assert after.reasons == ("max_sample", "sample_ratio_mismatch_assigned")


def _period(n_a: int, n_b: int, acc: float, labelled: float = 1.0) -> StratumStats:
    def arm(n: int) -> ArmStats:
        lab = round(n * labelled)
        return ArmStats(assigned=n, requests=n, closed=n, labelled=lab, correct=round(lab * acc))

    return StratumStats(champion=arm(n_a), challenger=arm(n_b))


def test_arms_are_compared_within_periods_so_drifting_accuracy_is_no_effect() -> None:
    # Accuracy rises 0.70 → 0.90 in both arms; most challenger outcomes are late ones.
    drift = ExperimentStats(
        strata={"0.05": _period(3800, 200, 0.70), "0.5": _period(2000, 2000, 0.90)}
    )
    pooled = drift.challenger.accuracy - drift.champion.accuracy
    assert pooled > 0.05  # what pooling the ramp would have promoted
    after = look(running(1), drift, NOW)
    assert after.last_look is not None
    assert after.last_look.primary is not None
    assert after.last_look.primary.diff == pytest.approx(0.0, abs=1e-12)
    assert after.last_look.primary.strata == 2
    assert after.decision == "continue"


def test_opposite_imbalances_in_two_periods_do_not_cancel() -> None:
    # 0.05: the challenger got 10 %; 0.5: 45 %. Pooled, 550 of 3000 is close to the 0.35 expected
    # of a naive blend, but each period alone is far off.
    skewed = ExperimentStats(
        strata={"0.05": _period(900, 100, 0.8), "0.5": _period(1100, 900, 0.8)}
    )
    after = look(running(1), skewed, NOW)
    assert after.decision == "hold"
    assert after.last_look is not None
    assert after.last_look.srm.chi_square_df == 2


def test_a_label_rate_gap_inside_the_margin_is_not_a_sample_ratio_mismatch() -> None:
    gap = ExperimentStats(
        strata={
            "0.5": StratumStats(
                champion=_period(2000, 0, 0.8, 0.80).champion,
                challenger=_period(0, 2000, 0.8, 0.77).challenger,
            )
        }
    )
    after = look(running(1), gap, NOW)
    assert after.decision != "hold"
    assert after.last_look is not None
    assert not after.last_look.srm.mismatch


def test_errors_rising_tenfold_from_a_rare_rate_harm() -> None:
    # 0.1 % → 1.0 %: within an absolute margin of one point, ten times as many failures.
    base = _period(30_000, 30_000, 0.8)
    rare = StratumStats(
        champion=base.champion.model_copy(update={"errors": 30}),
        challenger=base.challenger.model_copy(update={"errors": 300}),
    )
    results = guardrail_results(ExperimentStats(strata={"0.5": rare}), PLAN.decision, {})
    (errors,) = [g for g in results if g.name == "error_rate"]
    assert errors.margin == pytest.approx(PLAN.decision.error_rate_margin)
    assert errors.harmed
    absolute = PLAN.decision.model_copy(
        update={"error_rate_margin": 0.01, "error_rate_relative_margin": 0.0}
    )
    (lenient,) = [
        g
        for g in guardrail_results(ExperimentStats(strata={"0.5": rare}), absolute, {})
        if g.name == "error_rate"
    ]
    assert not lenient.harmed


def test_a_challenger_failing_every_request_is_rolled_back_without_any_outcome() -> None:
    champion = ArmStats(assigned=950, requests=950, closed=950, labelled=950, correct=760)
    challenger = ArmStats(assigned=150, requests=150, errors=150)
    after = look(running(0), ExperimentStats.single(champion, challenger, 0.1), NOW)
    assert (after.status, after.decision) == ("rolled_back", "rollback")
    assert after.reasons == ("guardrail_harmed:error_rate",)


def test_failed_requests_count_as_assigned_units_of_their_period() -> None:
    failed = PredictionFailed(
        producer="gateway",
        request_id="f",
        model_name="m",
        version="2",
        variant="challenger",
        error_type="ValueError",
        rows=1000,
        latency_ms=1.0,
        experiment_id="exp-1",
        challenger_share=0.05,
    )
    s = stats_from_counters(failure_increments(failed))
    assert (s.challenger.assigned, s.challenger.requests, s.challenger.errors) == (1, 1, 1)


def test_the_minimum_detectable_difference_replaces_observed_power() -> None:
    after = look(running(1), stats(1000, 0.80, 1000, 0.80), NOW)
    assert after.last_look is not None
    assert after.last_look.primary is not None
    primary = after.last_look.primary
    assert primary.minimum_detectable_effect == pytest.approx(2.8016 * primary.se, rel=1e-4)
