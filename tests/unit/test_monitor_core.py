"""The monitor's KS scoring and alarm policy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from services.monitor.core import (
    DriftDetector,
    Reference,
    ks_critical_value,
    ks_p_value,
    ks_statistic,
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


def test_critical_value_is_the_statistic_where_the_p_value_equals_alpha() -> None:
    critical = ks_critical_value(0.01, 10_000, 1000)
    assert ks_p_value(critical, 10_000, 1000) == pytest.approx(0.01)


def _reference(rng: np.random.Generator, features: int = 5) -> Reference:
    return Reference.from_columns("1", {f"f{i}": rng.normal(size=10_000) for i in range(features)})


def _feed(detector: DriftDetector, rows: np.ndarray) -> list[bool]:
    verdicts = [detector.add({f"f{i}": v for i, v in enumerate(row)}) for row in rows]
    return [v.alarm for v in verdicts if v is not None]


def test_stationary_stream_rarely_alarms() -> None:
    rng = np.random.default_rng(1)
    detector = DriftDetector(_reference(rng), window_size=500, alpha=0.05, cooldown_windows=0)
    alarms = _feed(detector, rng.normal(size=(500 * 100, 5)))
    assert len(alarms) == 100
    assert sum(alarms) <= 15  # design rate 5 % per window; far fewer than a broken test would give


def test_a_shifted_feature_alarms_once_then_cools_down() -> None:
    rng = np.random.default_rng(2)
    detector = DriftDetector(_reference(rng), window_size=500, cooldown_windows=3)
    shifted = rng.normal(size=(500 * 4, 5))
    shifted[:, 2] += 0.5
    assert _feed(detector, shifted) == [True, False, False, False]


def test_persistence_needs_consecutive_drifted_windows() -> None:
    rng = np.random.default_rng(3)
    detector = DriftDetector(_reference(rng), window_size=500, persistence=2)
    shifted = rng.normal(size=(1000, 5))
    shifted[:, 0] *= 2.0
    assert _feed(detector, shifted) == [False, True]
