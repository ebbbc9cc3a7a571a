"""A regressor's concept drift: the loss CUSUM, and one model's loss trackers per version."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.monitor.core import DriftConfig, LossCusum, ModelDrift, Reference, SavedState
from shared.events import FeedbackReceived, Variant
from shared.spec import RegressionLoss

CONFIG = DriftConfig(window_size=50, persistence=1, pooled_windows=0)


def _losses(errors: np.ndarray, loss: RegressionLoss) -> list[float]:
    return [float(x) for x in (errors**2 if loss == "squared" else np.abs(errors))]


def _alarms(cusum: LossCusum, losses: list[float]) -> list[int]:
    """Positions of the outcomes that raised an alarm."""
    return [i for i, x in enumerate(losses) if cusum.add(x) is not None]


# Baselines of unit-scale residuals: mean squared error 1; mean absolute error √(2/π)
# (Gaussian) or 1 (Laplace).
@pytest.mark.parametrize(
    ("residuals", "loss", "baseline"),
    [
        ("normal", "squared", 1.0),
        ("normal", "absolute", float(np.sqrt(2 / np.pi))),
        ("laplace", "squared", 2.0),
        ("laplace", "absolute", 1.0),
        ("student_t3", "squared", 3.0),
    ],
)
def test_a_stationary_loss_raises_no_alarm(
    residuals: str, loss: RegressionLoss, baseline: float
) -> None:
    rng = np.random.default_rng(1)

    def draw(n: int) -> np.ndarray:
        if residuals == "normal":
            return rng.normal(size=n)
        if residuals == "laplace":
            return rng.laplace(size=n)
        return rng.standard_t(3, size=n)

    cusum = LossCusum(baseline=baseline, loss=loss)
    assert _alarms(cusum, _losses(draw(20_000), loss)) == []
    # Positive control: the same tracker sees the same errors doubled.
    assert _alarms(cusum, _losses(2 * draw(2_000), loss)) != []


@pytest.mark.parametrize("loss", ["squared", "absolute"])
def test_a_clear_rise_of_the_loss_alarms_within_a_few_hundred_outcomes(
    loss: RegressionLoss,
) -> None:
    rng = np.random.default_rng(2)
    baseline = 1.0 if loss == "squared" else float(np.sqrt(2 / np.pi))
    cusum = LossCusum(baseline=baseline, loss=loss)
    assert _alarms(cusum, _losses(rng.normal(size=500), loss)) == []
    alarms = _alarms(cusum, _losses(rng.normal(scale=2.0, size=1_000), loss))
    assert alarms
    assert alarms[0] < 200
    assert cusum.rolling_loss is not None
    assert cusum.rolling_loss > 2 * baseline


def test_one_outlier_does_not_alarm_and_the_verdict_names_the_evidence() -> None:
    cusum = LossCusum(baseline=1.0, loss="squared", min_labelled=1)
    assert cusum.add(1e6) is None  # winsorized: a single wild outcome is not drift
    verdict = next(v for v in (cusum.add(25.0) for _ in range(100)) if v is not None)
    assert verdict.baseline == 1.0
    assert verdict.statistic >= verdict.threshold == pytest.approx(np.log(10_000))
    assert verdict.p_value == pytest.approx(np.exp(-verdict.statistic))
    assert cusum.statistic == 0.0  # the next alarm needs fresh evidence


def test_heavy_tailed_losses_lower_the_assumed_shape() -> None:
    rng = np.random.default_rng(3)
    gaussian, heavy = LossCusum(baseline=1.0), LossCusum(baseline=3.0)
    for x in _losses(rng.normal(size=500), "squared"):
        gaussian.add(x)
    for x in _losses(rng.standard_t(3, size=500), "squared"):
        heavy.add(x)
    assert 0.4 < gaussian.shape <= 0.5
    assert heavy.shape < 0.3


def test_a_restored_tracker_continues_exactly() -> None:
    rng = np.random.default_rng(4)
    losses = _losses(rng.normal(scale=1.3, size=400), "squared")
    whole, first = LossCusum(baseline=1.0, rolling=100), LossCusum(baseline=1.0, rolling=100)
    for x in losses[:250]:
        whole.add(x)
        first.add(x)
    second = LossCusum(baseline=1.0, rolling=100)
    second.restore(json.loads(json.dumps(first.state())))
    alarms = _alarms(whole, losses[250:])
    assert alarms  # a loss 69 % above the baseline: something to agree on
    assert _alarms(second, losses[250:]) == alarms
    assert whole.statistic == pytest.approx(second.statistic)
    assert whole.rolling_loss == pytest.approx(second.rolling_loss)


def _reference(loss: float | None = 1.0, kind: RegressionLoss = "squared") -> Reference:
    rng = np.random.default_rng(0)
    return Reference.from_columns(
        "7", {"a": rng.normal(size=500)}, None, (), None, baseline_loss=loss, loss=kind
    )


def _feedback(error: float, variant: Variant = "champion", version: str = "3") -> FeedbackReceived:
    return FeedbackReceived(
        producer="gateway",
        request_id="r",
        model_name="house-prices",
        version=version,
        variant=variant,
        predicted_value=10.0 + error,
        true_value=10.0,
    )


@pytest.mark.parametrize(("variant", "alarms"), [("champion", 1), ("challenger", 0)])
def test_a_rising_loss_of_the_champion_is_one_concept_drift_per_version(
    variant: Variant, alarms: int
) -> None:
    drift = ModelDrift.start("house-prices", _reference(), CONFIG)
    rng = np.random.default_rng(5)
    healthy = [drift.judge(_feedback(float(e), variant)) for e in rng.normal(size=300)]
    assert all(j is not None and j.drift is None for j in healthy)
    judged = [drift.judge(_feedback(float(e), variant)) for e in rng.normal(scale=3, size=2000)]
    drifts = [j.drift for j in judged if j is not None and j.drift is not None]
    assert [(d.kind, d.variant, d.version, d.model_name) for d in drifts] == [
        ("concept", variant, "3", "house-prices")
    ] * alarms
    if alarms:
        (result,) = drifts[0].features
        assert (result.feature, result.test, result.threshold) == ("squared_loss", "loss", 1.0)
        assert result.statistic > 1.0  # the rolling mean squared error, still mostly healthy
        assert result.p_value < 1e-4
    last = judged[-1]
    assert last is not None
    assert last.accuracy is None
    assert last.loss is not None
    assert 6 < last.loss < 12  # the rolling mean squared error of sd-3 residuals


def test_absolute_loss_is_scored_as_the_spec_says() -> None:
    drift = ModelDrift.start("house-prices", _reference(loss=0.5, kind="absolute"), CONFIG)
    judged = drift.judge(_feedback(-2.0))
    assert judged is not None
    assert judged.loss == 2.0


def test_a_regressor_without_a_baseline_or_a_true_value_says_nothing() -> None:
    assert ModelDrift.start("m", _reference(loss=None), CONFIG).judge(_feedback(1.0)) is None
    unlabelled = _feedback(1.0).model_copy(update={"true_value": None})
    assert ModelDrift.start("m", _reference(), CONFIG).judge(unlabelled) is None
    assert ModelDrift.start("m", _reference(), CONFIG).judge(_feedback(1.0)) is not None


def test_loss_trackers_and_their_alarm_survive_a_restart() -> None:
    drift = ModelDrift.start("house-prices", _reference(), CONFIG)
    rng = np.random.default_rng(6)
    fired = [drift.judge(_feedback(float(e))) for e in rng.normal(scale=3, size=1000)]
    assert any(j is not None and j.drift is not None for j in fired)
    saved: SavedState = json.loads(json.dumps(drift.state())), [], []
    restored = ModelDrift.start("house-prices", _reference(), CONFIG)
    assert restored.restore(saved)
    assert restored.losses[("champion", "3")].labelled == 1000
    again = [restored.judge(_feedback(float(e))) for e in rng.normal(scale=3, size=1000)]
    assert all(j is not None and j.drift is None for j in again)  # once per version


def test_a_state_saved_before_regressors_were_watched_restores() -> None:
    drift = ModelDrift.start("m", _reference(), CONFIG)
    state = json.loads(json.dumps(drift.state()))
    del state["loss"]
    assert ModelDrift.start("m", _reference(), CONFIG).restore((state, [], []))
