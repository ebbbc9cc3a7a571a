"""Looks at a running experiment: ramp stages, holds, verdicts, and the report built from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.router.core import Experiment
from services.router.core.decision import (
    ArmStats,
    DecisionConfig,
    ExperimentStats,
    SplitTotals,
    guardrail_results,
)
from services.router.core.experiment import ExperimentPlan
from services.router.core.lifecycle import look, look_due, state_changed
from services.router.core.report import build_report, look_point
from services.router.core.tally import (
    feedback_increments,
    prediction_increments,
    stats_from_counters,
)
from shared.events import FeedbackReceived, PredictionLogged

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
        return ArmStats(assigned=n, labelled=n if labelled else 0, correct=round(n * acc))

    return ExperimentStats(
        champion=arm(n_a, acc_a),
        challenger=arm(n_b, acc_b),
        split=SplitTotals(assigned={str(share): n_a + n_b}, labelled={str(share): n_a + n_b}),
    )


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
    assert (after.status, after.decision) == ("rolled_back", "inconclusive")
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
            "request_id": "r",
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


def test_counters_add_up_to_the_arms_statistics() -> None:
    counters: dict[str, float] = {}
    events = [_prediction("champion", 0.1, 2.0), _prediction("challenger", 0.1, 8.0)]
    increments = [prediction_increments(e) for e in events]
    feedback = FeedbackReceived(
        producer="gateway",
        request_id="r",
        model_name="m",
        version="2",
        variant="challenger",
        predicted_class="steady",
        true_label="steady",
        correct=True,
        experiment_id="exp-1",
        challenger_share=0.1,
    )
    increments.append(feedback_increments(feedback))
    for inc in increments:
        for key, amount in inc.items():
            counters[key] = counters.get(key, 0.0) + amount
    s = stats_from_counters(counters)
    assert (s.champion.assigned, s.challenger.assigned) == (1, 1)
    assert (s.challenger.labelled, s.challenger.correct, s.champion.labelled) == (1, 1, 0)
    assert s.split.assigned == {"0.1": 2}
    assert s.split.labelled == {"0.1": 1}
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
    """Share 0.1 fully labelled; share 0.5 recent, so only half its feedback is in yet."""
    split = SplitTotals(
        assigned={"0.1": 1000, "0.5": 1000},
        labelled={"0.1": 1000, "0.5": 250 + challenger_labelled_late},
        challenger_assigned={"0.1": 100, "0.5": 500},
        challenger_labelled={"0.1": 100, "0.5": challenger_labelled_late},
    )
    return ExperimentStats(
        champion=ArmStats(assigned=1400, labelled=1150, correct=900),
        challenger=ArmStats(assigned=600, labelled=100 + challenger_labelled_late, correct=400),
        split=split,
    )


def test_label_rate_is_compared_within_each_split_so_a_ramp_with_late_feedback_is_no_harm() -> None:
    # Pooled, the challenger looks far less labelled (350/600 vs 1150/1400): that is the ramp.
    (rate,) = [
        g for g in guardrail_results(_ramped(250), PLAN.decision, {}) if g.name == "label_rate"
    ]
    assert rate.deterioration == pytest.approx(0.0)
    assert not rate.harmed
    (lost,) = [
        g for g in guardrail_results(_ramped(50), PLAN.decision, {}) if g.name == "label_rate"
    ]
    assert lost.deterioration == pytest.approx(0.5 * (0.5 - 0.1))
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
    failing = base.model_copy(
        update={"challenger": base.challenger.model_copy(update={"errors": 60})}
    )
    (errors,) = [g for g in guardrail_results(failing, PLAN.decision, {}) if g.name == "error_rate"]
    assert errors.harmed
