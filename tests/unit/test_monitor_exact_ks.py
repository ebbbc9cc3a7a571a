"""Every KS fast path of the monitor equals scipy's statistic, ties included (property-based)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp

from services.monitor.core import DriftDetector, Reference, ks_statistic, ks_statistics
from services.monitor.core.pooled import PooledKS

FEATURES = 3


@st.composite
def samples(draw: st.DrawFn, size: st.SearchStrategy[int]) -> np.ndarray:
    """A sample (rows × FEATURES): binary, few-level integer, count, rounded or continuous."""
    rows = draw(size)
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["binary", "levels", "counts", "rounded", "continuous"]))
    rng = np.random.default_rng(seed)
    shift = draw(st.floats(-1, 1))
    if kind == "binary":
        return (rng.random((rows, FEATURES)) < 0.3 + 0.2 * shift).astype(float)
    if kind == "levels":
        return rng.integers(0, draw(st.integers(1, 6)), size=(rows, FEATURES)).astype(float)
    if kind == "counts":
        return rng.poisson(2 + shift, size=(rows, FEATURES)).astype(float)
    normal = rng.normal(shift, 1, size=(rows, FEATURES))
    return normal.round(1) if kind == "rounded" else normal


def _scipy(reference: np.ndarray, window: np.ndarray) -> list[float]:
    return [
        float(ks_2samp(reference[:, j], window[:, j], method="asymp").statistic)
        for j in range(FEATURES)
    ]


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # scipy's p for 1 row
@settings(max_examples=150, deadline=None)
@given(samples(st.integers(1, 400)), samples(st.integers(1, 200)))
def test_window_statistics_equal_scipy(reference: np.ndarray, window: np.ndarray) -> None:
    sorted_refs = [np.sort(reference[:, j]) for j in range(FEATURES)]
    assert ks_statistics(sorted_refs, window).tolist() == _scipy(reference, window)
    assert ks_statistic(sorted_refs[0], window[:, 0]) == _scipy(reference, window)[0]


@settings(max_examples=150, deadline=None)
@given(
    samples(st.integers(1, 400)),
    st.lists(samples(st.just(25)), min_size=4, max_size=4),
    st.integers(1, 3),
)
def test_pooled_statistics_equal_scipy_on_the_pooled_rows(
    reference: np.ndarray, windows: list[np.ndarray], pooled_windows: int
) -> None:
    sorted_refs = [np.sort(reference[:, j]) for j in range(FEATURES)]
    pooled = PooledKS(sorted_refs, pooled_windows, 25, alpha=0.01)
    for i, window in enumerate(windows):
        got = pooled.add(window)
        if i + 1 < pooled_windows:
            assert got is None
            continue
        assert got is not None
        rows = np.concatenate(windows[i + 1 - pooled_windows : i + 1])
        assert got.tolist() == _scipy(reference, rows)


def test_pooled_statistic_of_a_five_level_integer_feature_is_scipys_not_stepped_through_ties() -> (
    None
):
    rng = np.random.default_rng(11)
    levels = rng.integers(0, 5, size=(10_000, 1)).astype(float)
    detector = DriftDetector(
        Reference.from_columns("1", {"x": levels[:, 0]}), window_size=1000, pooled_windows=8
    )
    stream = rng.integers(0, 5, size=(8000, 1)).astype(float)
    verdict = detector.add_numeric(stream)[-1]
    pooled = verdict.features[0].pooled_statistic
    expected = ks_2samp(levels[:, 0], stream[:, 0], method="asymp").statistic
    assert pooled == expected
    assert pooled is not None
    assert pooled < 0.05  # stepping through each run of ties one rank at a time gave ~0.2
