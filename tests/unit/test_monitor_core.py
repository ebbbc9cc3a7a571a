"""The monitor's statistics and alarm policy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency, ks_2samp, norm
from statsmodels.stats.contingency_tables import Table

from services.monitor.core import (
    AccuracyCusum,
    CategoricalReference,
    DriftDetector,
    Reference,
    WindowMark,
    ks_critical_value,
    ks_p_value,
    ks_p_values,
    ks_statistic,
    ks_statistics,
    rejections,
)


@pytest.mark.parametrize("decimals", [0, 1, 3])
@pytest.mark.parametrize("seed", range(5))
def test_ks_statistic_equals_scipy_exactly_with_and_without_ties(seed: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=2000).round(decimals)
    window = rng.normal(0.1 * seed, 1 + 0.1 * seed, size=300).round(decimals)
    expected = ks_2samp(reference, window, method="asymp")
    statistic = ks_statistic(np.sort(reference), window)
    assert statistic == expected.statistic
    assert ks_p_value(statistic, reference.size, window.size) == pytest.approx(expected.pvalue)


def test_all_features_at_once_equal_scipy_on_a_corpus_with_ties() -> None:
    rng = np.random.default_rng(42)
    mismatches = 0
    for case in range(60):
        decimals = case % 4  # 0 decimals: heavy ties
        reference = rng.normal(size=(int(rng.integers(30, 3000)), 4)).round(decimals)
        window = rng.normal(rng.normal(0, 0.3), 1, size=(int(rng.integers(5, 600)), 4))
        window = window.round(decimals)
        sorted_refs = [np.sort(reference[:, j]) for j in range(4)]
        ours = ks_statistics(sorted_refs, window)
        for j in range(4):
            theirs = ks_2samp(reference[:, j], window[:, j], method="asymp")
            mismatches += ours[j] != theirs.statistic
        p = ks_p_values(ours, [r.size for r in sorted_refs], window.shape[0])
        assert p[0] == pytest.approx(ks_2samp(reference[:, 0], window[:, 0], method="asymp").pvalue)
    assert mismatches == 0


def test_critical_value_is_the_statistic_where_the_p_value_equals_alpha() -> None:
    critical = ks_critical_value(0.01, 10_000, 1000)
    assert ks_p_value(critical, 10_000, 1000) == pytest.approx(0.01)


def test_chi2_is_the_homogeneity_test_with_unseen_values_in_other_and_counts_them() -> None:
    counts = {"a": 500, "b": 300, "c": 150, "d": 30, "e": 20}
    reference = CategoricalReference.from_values([k for k, n in counts.items() for _ in range(n)])
    table = reference.table(window_size=100)
    window = ["a"] * 40 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5 + ["e"] * 4 + ["zzz"] * 6
    result = table.test(window)
    # "d" and "e" expect 3 and 2 per window of 100: merged, with unseen values, into "other".
    expected = chi2_contingency([[500, 300, 150, 50], [40, 30, 15, 15]], correction=False)
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.shares_p_value == pytest.approx(expected.pvalue)
    assert table.degrees_of_freedom == 3
    assert result.unseen == 6
    # The one-share test: the largest adjusted residual (statsmodels), Bonferroni over 4 cells.
    residuals = Table(np.array([[500, 300, 150, 50], [40, 30, 15, 15]])).standardized_resids
    assert result.cell_p_value == pytest.approx(4 * 2 * norm.sf(np.abs(residuals[1]).max()))


def test_a_too_small_other_cell_takes_in_the_smallest_kept_category() -> None:
    reference = CategoricalReference.from_values(["a"] * 600 + ["b"] * 380 + ["c"] * 20)
    table = reference.table(window_size=100)  # "c" alone would expect 2: "b" joins it
    assert table.cell_of == {"a": 0}
    assert table.degrees_of_freedom == 1


def test_benjamini_hochberg_rejects_at_least_what_bonferroni_does() -> None:
    p = np.array([0.0001, 0.004, 0.019, 0.03, 0.6])
    assert rejections(p, 0.05, "bonferroni").tolist() == [True, True, False, False, False]
    assert rejections(p, 0.05, "bh").tolist() == [True, True, True, True, False]


def _reference(rng: np.random.Generator, features: int = 5) -> Reference:
    return Reference.from_columns("1", {f"f{i}": rng.normal(size=10_000) for i in range(features)})


def _rows(matrix: np.ndarray) -> list[dict[str, object]]:
    return [{f"f{i}": float(v) for i, v in enumerate(row)} for row in matrix]


def _alarms(detector: DriftDetector, matrix: np.ndarray) -> list[bool]:
    return [v.alarm for v in detector.add_rows(_rows(matrix)).verdicts]


def test_stationary_stream_raises_no_drift_with_the_default_hysteresis() -> None:
    rng = np.random.default_rng(1)
    detector = DriftDetector(_reference(rng, 20), window_size=1000)
    alarms = _alarms(detector, rng.normal(size=(1000 * 60, 20)))
    assert len(alarms) == 60
    assert not any(alarms)


def test_a_half_sigma_shift_alarms_once_within_one_window_naming_the_feature() -> None:
    rng = np.random.default_rng(2)
    detector = DriftDetector(_reference(rng, 20), window_size=1000, cooldown_windows=5)
    shifted = rng.normal(size=(1000 * 6, 20))
    shifted[:, 2] += 0.5
    verdicts = detector.add_rows(_rows(shifted)).verdicts
    assert [v.alarm for v in verdicts] == [True, False, False, False, False, False]
    features = verdicts[0].features
    assert "f2" in [f.feature for f in features if f.drifted]
    # Only the shifted feature is beyond the strong threshold that let it alarm at once.
    strong = [
        f.feature
        for f, t in zip(features, detector.strong_thresholds, strict=True)
        if f.statistic > t
    ]
    assert strong == ["f2"]


def test_a_modest_shift_needs_two_consecutive_drifted_windows() -> None:
    rng = np.random.default_rng(3)
    detector = DriftDetector(_reference(rng), window_size=1000, strong_alpha=1e-300)
    shifted = rng.normal(size=(2000, 5))
    shifted[:, 0] *= 1.5
    assert _alarms(detector, shifted) == [False, True]


def test_bad_rows_are_counted_by_reason_and_left_out() -> None:
    rng = np.random.default_rng(4)
    detector = DriftDetector(_reference(rng, 2), window_size=3)
    rows: list[dict[str, object]] = [
        {"f0": 1.0, "f1": 2.0},
        {"f0": 1.0},
        {"f0": float("nan"), "f1": 0.0},
        {"f0": float("inf"), "f1": 0.0},
        {"f0": "x", "f1": 0.0},
        {"f0": 0.5, "f1": 1, "extra": "ignored"},
    ]
    outcome = detector.add_rows(rows)
    assert outcome.rejected == {"missing_feature": 1, "non_finite": 2, "wrong_type": 1}
    assert detector.filled == 2
    assert outcome.verdicts == []


def test_state_round_trip_continues_the_same_window() -> None:
    rng = np.random.default_rng(5)
    reference = _reference(rng, 3)
    data = rng.normal(size=(1500, 3))
    marks = [WindowMark(f"t{i}", f"e{i}", f"c{i}") for i in range(1500)]
    whole = DriftDetector(reference, window_size=1000)
    expected = whole.add_rows(_rows(data), marks).verdicts
    first = DriftDetector(reference, window_size=1000)
    first.add_rows(_rows(data[:500]), marks[:500])
    chunks = [first.rows()]
    first.add_rows(_rows(data[500:700]), marks[500:700])
    chunks.append(first.rows(last=200))
    second = DriftDetector(reference, window_size=1000)
    second.restore(first.state(), chunks)
    got = second.add_rows(_rows(data[700:]), marks[700:]).verdicts
    assert [v.features for v in got] == [v.features for v in expected]
    assert got[0].first == marks[0]
    assert got[0].last == marks[999]


def test_accuracy_cusum_is_quiet_at_baseline_and_catches_a_drop() -> None:
    rng = np.random.default_rng(6)
    quiet = AccuracyCusum(baseline=0.85, min_drop=0.05, arl=10_000)
    assert all(quiet.add(bool(c)) is None for c in rng.random(3000) < 0.85)
    dropped = AccuracyCusum(baseline=0.85, min_drop=0.05, arl=10_000)
    verdicts = [dropped.add(bool(c)) for c in rng.random(3000) < 0.7]
    found = [v for v in verdicts if v is not None]
    assert found
    assert found[0].rolling_accuracy < 0.8
    assert found[0].p_value <= 1e-4


def test_benjamini_hochberg_detector_flags_a_feature_bonferroni_misses() -> None:
    rng = np.random.default_rng(8)
    reference = _reference(rng, 20)
    window = rng.normal(size=(1000, 20))
    window[:, :6] += 0.09  # six modest shifts: BH gains power when several features move
    bonferroni = DriftDetector(reference, window_size=1000, persistence=1)
    bh = DriftDetector(reference, window_size=1000, persistence=1, correction="bh")
    flagged_bonferroni = {
        f.feature for f in bonferroni.add_numeric(window)[0].features if f.drifted
    }
    verdict = bh.add_numeric(window)[0]
    flagged_bh = {f.feature for f in verdict.features if f.drifted}
    assert flagged_bonferroni < flagged_bh
    assert flagged_bh <= {f"f{i}" for i in range(6)}
    # The reported threshold is the critical value at the BH cut-off level.
    assert all(f.statistic > f.threshold for f in verdict.features if f.drifted)


def test_a_small_lasting_shift_is_found_by_the_pooled_windows_and_survives_a_restart() -> None:
    rng = np.random.default_rng(9)
    reference = _reference(rng, 20)
    stream = rng.normal(size=(10_000, 20))
    stream[:, 3] += 0.15
    quiet = {"persistence": 99, "strong_alpha": 1e-300}  # only the pooled test may alarm
    without = DriftDetector(reference, window_size=1000, pooled_windows=0, **quiet)  # type: ignore[arg-type]
    assert not any(v.alarm for v in without.add_numeric(stream))
    first = DriftDetector(reference, window_size=1000, **quiet)  # type: ignore[arg-type]
    assert not any(v.alarm for v in first.add_numeric(stream[:5000]))
    second = DriftDetector(reference, window_size=1000, **quiet)  # type: ignore[arg-type]
    second.restore(first.state(), [], first.pooled_chunks(8))
    verdicts = second.add_numeric(stream[5000:])
    alarmed = [i for i, v in enumerate(verdicts) if v.alarm]
    assert alarmed == [2]  # the eighth window overall: the first full pooled look
    pooled = [f.feature for f in verdicts[2].features if f.pooled_statistic and f.pooled_threshold
              and f.pooled_statistic > f.pooled_threshold]  # fmt: skip
    assert pooled == ["f3"]
