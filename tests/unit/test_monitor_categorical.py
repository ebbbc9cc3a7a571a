"""Categorical drift with many rare categories: merged cells, unseen share tested on its own."""

from __future__ import annotations

import numpy as np
import pytest

from services.monitor.core import CategoricalReference, DriftDetector, Reference

CATEGORIES = 2000


def _zipf(rng: np.random.Generator, size: int) -> list[str]:
    weights = 1 / np.arange(1, CATEGORIES + 1) ** 1.1
    return [f"c{i}" for i in rng.choice(CATEGORIES, size=size, p=weights / weights.sum())]


def _detector(rng: np.random.Generator) -> DriftDetector:
    reference = Reference.from_columns(
        "1", {"x": rng.normal(size=10_000)}, {"city": _zipf(rng, 10_000)}
    )
    return DriftDetector(reference, window_size=1000)


def _rows(rng: np.random.Generator, cities: list[str]) -> list[dict[str, object]]:
    return [{"x": float(rng.normal()), "city": c} for c in cities]


def test_thousands_of_zipf_categories_merge_into_few_cells_and_stay_quiet() -> None:
    rng = np.random.default_rng(0)
    detector = _detector(rng)
    table = detector.reference.categorical["city"].table(detector.window_size)
    assert table.degrees_of_freedom < 100  # every cell expects ≥ 5 per window
    verdicts = detector.add_rows(_rows(rng, _zipf(rng, 60_000))).verdicts
    assert len(verdicts) == 60
    assert sum(v.features[1].unseen for v in verdicts) > 60 * 20  # unseen values are common
    flagged = sum(v.features[1].drifted for v in verdicts)
    assert flagged <= 6  # α = 0.05 over 2 features: ≈ 1.5 flagged windows expected
    assert not any(v.alarm for v in verdicts)


def test_a_five_point_share_move_is_detected_within_two_windows() -> None:
    rng = np.random.default_rng(1)
    detector = _detector(rng)
    cities = _zipf(rng, 2000)
    top = [i for i, c in enumerate(cities) if c == "c0"]
    for i in top[: len(top) * 5 // 16]:  # c0 has ≈ 16 % of traffic: move 5 points to c1
        cities[i] = "c1"
    alarms = [v.alarm for v in detector.add_rows(_rows(rng, cities)).verdicts]
    assert any(alarms)


def test_a_flood_of_new_categories_is_caught_by_the_unseen_test() -> None:
    rng = np.random.default_rng(2)
    reference = CategoricalReference.from_values(_zipf(rng, 10_000))
    table = reference.table(window_size=1000)
    quiet = table.test(_zipf(rng, 1000))
    cities = _zipf(rng, 1000)
    flooded = [f"new{i}" if i % 10 == 0 else c for i, c in enumerate(cities)]  # +10 % unseen
    loud = table.test(flooded)
    assert quiet.unseen_p_value > 1e-3
    assert loud.unseen_p_value < 1e-6
    assert loud.unseen > quiet.unseen + 80


def test_a_stray_unseen_value_does_not_drift_against_a_reference_without_singletons() -> None:
    reference = CategoricalReference.from_values(["basic"] * 5000 + ["pro"] * 5000)
    assert reference.singletons == 0
    table = reference.table(window_size=1000)
    stray = table.test(["basic"] * 500 + ["pro"] * 499 + ["x"])
    assert stray.unseen == 1
    assert stray.p_value > 0.05
    # The exact test's p for u unseen with n1 = 0 is (W / (N + W))^u, tripled in the feature.
    several = table.test(["basic"] * 500 + ["pro"] * 496 + ["x", "y", "x", "z"])
    assert several.unseen_p_value == pytest.approx((1000 / 11_000) ** 4)
    assert several.p_value == pytest.approx(3 * (1000 / 11_000) ** 4)


def test_a_small_lasting_share_move_is_found_pooled_and_survives_a_restart() -> None:
    rng = np.random.default_rng(3)
    reference = Reference.from_columns("1", {}, {"city": _zipf(rng, 10_000)})
    quiet = {"persistence": 99, "strong_alpha": 1e-300}  # only the pooled test may alarm
    cities = _zipf(rng, 8000)
    moved = [i for i, c in enumerate(cities) if c != "c0" and rng.random() < 0.03 / 0.83]
    for i in moved:  # c0 gains 3 points: too little for one window at this level
        cities[i] = "c0"
    labels = [[c] for c in cities]
    empty = np.empty((8000, 0))
    without = DriftDetector(reference, pooled_windows=0, **quiet)  # type: ignore[arg-type]
    assert not any(v.alarm for v in without.add_numeric(empty, labels))
    first = DriftDetector(reference, **quiet)  # type: ignore[arg-type]
    assert not any(v.alarm for v in first.add_numeric(empty[:5000], labels[:5000]))
    second = DriftDetector(reference, **quiet)  # type: ignore[arg-type]
    second.restore(first.state(), [], first.pooled_chunks(8))
    verdicts = second.add_numeric(empty[5000:], labels[5000:])
    assert [v.alarm for v in verdicts] == [False, False, True]
    look = verdicts[2].features[0]
    assert look.pooled_statistic is not None
    assert look.pooled_threshold is not None
