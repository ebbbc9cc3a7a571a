"""A regressor's experiment: the per-outcome loss statistic, its error rates by simulation."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from scipy import stats as sps

from flywheel.report import render_markdown
from services.router.core import decide_on_approval
from services.router.core.decision import (
    ArmStats,
    DecisionConfig,
    ExperimentStats,
    RunningBounds,
    StratumStats,
    evaluate,
    share_key,
)
from services.router.core.experiment import Experiment, ExperimentPlan, plan_for_spec
from services.router.core.outcomes import (
    Closing,
    Label,
    OutcomeWindow,
    PendingOutcome,
    close_increments,
    decode_label,
    encode_label,
)
from services.router.core.report import build_report
from services.router.core.results import PrimaryMetric
from services.router.core.tally import label_of, stats_from_counters
from shared.events import FeedbackReceived, ModelApproved, ModelMetrics
from shared.spec import ModelSpec

SQUARED = DecisionConfig(metric="squared_error", min_labelled_per_arm=100)
#: Looks after every batch of 50 outcomes per arm: continuous peeking.
LOOKS, BATCH = 30, 50


def _spec(**fields: object) -> ModelSpec:
    features = ({"name": "x", "type": "numeric"},)
    return ModelSpec.model_validate({"name": "m", "label": "y", "features": features, **fields})


def _arm(losses: np.ndarray, shift: float = 0.0) -> ArmStats:
    shifted = losses - shift
    return ArmStats(
        loss_n=losses.size,
        loss_sum=float(shifted.sum()),
        loss_sumsq=float((shifted**2).sum()),
        closed=losses.size,
    )


def _stats(
    strata: dict[float, tuple[np.ndarray, np.ndarray]], shift: float = 0.0
) -> ExperimentStats:
    return ExperimentStats(
        strata={
            share_key(share): StratumStats(champion=_arm(a, shift), challenger=_arm(b, shift))
            for share, (a, b) in strata.items()
        },
        loss_shift=shift,
    )


def test_a_regressors_feedback_closes_into_its_loss() -> None:
    feedback = FeedbackReceived(
        producer="gateway",
        request_id="r",
        model_name="m",
        version="2",
        variant="challenger",
        predicted_value=10.0,
        true_value=13.0,
        experiment_id="e",
        challenger_share=0.5,
    )
    label = label_of(feedback)
    assert (label.error, label.correct) == (-3.0, None)
    assert decode_label(encode_label(label.model_copy(update={"seq": 4}))).error == -3.0
    pending = PendingOutcome(request_id="r", arm="challenger", stratum="0.5", predicted_at=0.0)
    closing = Closing([(pending, label.model_copy(update={"at": 1.0}))], None)
    squared = close_increments(closing, OutcomeWindow(), "squared")
    # The first loss is the shift: sums around it keep the variance's digits.
    assert squared.loss_shift == 9.0
    assert squared.increments["r"]["0.5|challenger:loss_n"] == 1
    assert squared.increments["r"]["0.5|challenger:loss_sum"] == 0.0
    absolute = close_increments(closing, OutcomeWindow(), "absolute")
    assert absolute.loss_shift == 3.0
    # A classifier's experiment counts no loss, whatever the feedback carries.
    assert "0.5|challenger:loss_n" not in close_increments(closing, OutcomeWindow()).increments["r"]


def test_an_overflowing_loss_is_counted_apart_not_capped() -> None:
    pending = PendingOutcome(request_id="r", arm="champion", stratum="0.5", predicted_at=0.0)
    huge = Label(error=1e100, at=1.0)
    closed = close_increments(
        Closing([(pending, huge)], None, loss_shift=0.0), OutcomeWindow(), "squared"
    )
    assert closed.increments["r"] == {"0.5|champion:closed": 1, "0.5|champion:loss_overflow": 1}
    assert stats_from_counters(closed.increments["r"]).champion.loss_overflow == 1


def test_one_stratum_of_losses_is_welchs_test_on_them() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1.0, 400) ** 2, rng.normal(0, 0.8, 300) ** 2
    result = evaluate(_stats({0.5: (a, b)}), SQUARED, {}).primary
    theirs = sps.ttest_ind(b, a, equal_var=False)
    assert result is not None
    assert result.name == "squared_error"
    assert result.lower_is_better
    assert result.diff == pytest.approx(b.mean() - a.mean())
    assert result.fixed_horizon_p == pytest.approx(theirs.pvalue, rel=1e-9)
    assert result.improvement_ci == (-result.always_valid_ci[1], -result.always_valid_ci[0])


def test_losses_near_1e8_keep_their_variance_around_the_shift() -> None:
    rng = np.random.default_rng(4)
    a, b = 1e8 + rng.normal(0, 1, 300), 1e8 + rng.normal(0.5, 1, 300)
    shifted = evaluate(_stats({0.5: (a, b)}, shift=float(a[0])), SQUARED, {}).primary
    theirs = sps.ttest_ind(b, a, equal_var=False)
    assert shifted is not None
    assert shifted.fixed_horizon_p == pytest.approx(theirs.pvalue, rel=1e-6)


def test_a_lower_loss_promotes_and_a_higher_one_rolls_back() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(0, 1.0, 2000) ** 2
    better, worse = rng.normal(0, 0.6, 2000) ** 2, rng.normal(0, 1.6, 2000) ** 2
    promoted = evaluate(_stats({0.5: (a, better)}), SQUARED, {})
    rolled_back = evaluate(_stats({0.5: (a, worse)}), SQUARED, {})
    assert (promoted.action, promoted.reasons[0]) == ("promote", "primary_better")
    assert (rolled_back.action, rolled_back.reasons) == ("rollback", ("primary_worse",))
    # Too few outcomes per arm: no verdict, however large the difference.
    early = evaluate(_stats({0.5: (a[:50], worse[:50])}), SQUARED, {})
    assert early.reasons == ("minimum_sample_not_reached",)


def _peeking(
    sd_a: float, sd_b: float, metric: PrimaryMetric, runs: int, seed: int
) -> dict[str, int]:
    """Verdicts of ``runs`` experiments looked at after every batch, across a two-stage ramp.

    Errors are Student-t (3 df: heavy-tailed losses) scaled by each arm's sd, and every
    loss grows 50 % at the second stage in both arms alike (drift the strata absorb).
    """
    rng = np.random.default_rng(seed)
    cfg = DecisionConfig(metric=metric, min_labelled_per_arm=100)
    verdicts = {"promote": 0, "rollback": 0, "none": 0}
    for _ in range(runs):
        samples: dict[float, tuple[list[float], list[float]]] = {0.1: ([], []), 0.5: ([], [])}
        bounds: dict[str, RunningBounds] = {}
        verdict = "none"
        for look in range(LOOKS):
            share = 0.1 if look < LOOKS // 2 else 0.5
            drift = 1.0 if share == 0.1 else 1.5
            n_b = max(2, int(2 * BATCH * share))
            err_a = rng.standard_t(3, 2 * BATCH - n_b) * sd_a * drift
            err_b = rng.standard_t(3, n_b) * sd_b * drift
            loss = np.square if metric == "squared_error" else np.abs
            samples[share][0].extend(loss(err_a))
            samples[share][1].extend(loss(err_b))
            s = _stats({k: (np.array(a), np.array(b)) for k, (a, b) in samples.items() if a})
            decision = evaluate(s, cfg, bounds)
            bounds = decision.bounds
            if decision.action in ("promote", "rollback"):
                verdict = decision.action
                break
        verdicts[verdict] += 1
    return verdicts


@pytest.mark.parametrize("metric", ["squared_error", "absolute_error"])
def test_a_a_with_continuous_peeking_keeps_false_verdicts_below_alpha(
    metric: PrimaryMetric,
) -> None:
    verdicts = _peeking(1.0, 1.0, metric, runs=200, seed=21)
    assert (verdicts["promote"] + verdicts["rollback"]) / 200 <= 0.05


def test_a_clearly_better_regressor_is_promoted_and_a_worse_one_rolled_back() -> None:
    better = _peeking(1.0, 0.6, "absolute_error", runs=50, seed=22)
    worse = _peeking(1.0, 1.6, "absolute_error", runs=50, seed=23)
    assert better["promote"] >= 45
    assert worse["rollback"] >= 45


def test_a_regressors_experiment_declares_its_loss_when_it_opens() -> None:
    plan = ExperimentPlan()
    assert plan_for_spec(plan, _spec(task="regression")).decision.metric == "squared_error"
    absolute = plan_for_spec(plan, _spec(task="regression", loss="absolute"))
    assert (absolute.decision.metric, absolute.loss) == ("absolute_error", "absolute")
    classifier = plan_for_spec(plan, _spec(classes=["a", "b"]))
    assert (classifier, classifier.loss) == (plan, None)
    approval = ModelApproved(
        producer="registry",
        model_name="m",
        version="2",
        run_id="run-2",
        alias="challenger",
        champion_version="1",
        metrics=ModelMetrics(rmse=1.0, mae=0.8, r2=0.5, validation_rows=50),
    )
    (opened,) = decide_on_approval(None, approval, absolute)
    assert opened.reasons == ("primary_metric:absolute_error",)
    (classified,) = decide_on_approval(None, approval, plan)
    assert classified.reasons == ()


def test_the_report_shows_each_arms_mean_loss_and_rmse() -> None:
    plan = plan_for_spec(ExperimentPlan(), _spec(task="regression"))
    experiment = Experiment(
        experiment_id="e",
        model_name="m",
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.5,
        opened_at=datetime.now(UTC),
        plan=plan,
    )
    s = _stats({0.5: (np.array([4.0, 16.0, 4.0]), np.array([1.0, 1.0, 1.0]))}, shift=4.0)
    report = build_report(experiment, s, [])
    assert report.primary_metric == "squared_error"
    champion, challenger = report.arms["champion"], report.arms["challenger"]
    assert (champion.loss_outcomes, champion.mean_loss) == (3, 8.0)
    assert champion.rmse == pytest.approx(8**0.5)
    assert (challenger.mean_loss, challenger.rmse, challenger.mae) == (1.0, 1.0, None)
    assert report.primary is not None
    assert report.primary.diff == pytest.approx(-7.0)


def test_flywheel_report_ab_shows_a_regressors_mean_loss_and_rmse() -> None:
    plan = plan_for_spec(ExperimentPlan(), _spec(task="regression"))
    experiment = Experiment(
        experiment_id="e",
        model_name="m",
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.5,
        opened_at=datetime.now(UTC),
        plan=plan,
    )
    s = _stats({0.5: (np.array([4.0, 16.0, 4.0]), np.array([1.0, 4.0, 1.0]))})
    markdown = render_markdown(build_report(experiment, s, []).model_dump(mode="json"), "p.png")
    assert (
        "| arm | version | assigned | outcomes | label rate | mean loss | RMSE | p95 ms |"
        in markdown
    )
    assert "| champion | 1 | 0 | 3 | 1 | 8 | 2.828 |" in markdown
    assert "| metric | squared_error (lower is better) |" in markdown
