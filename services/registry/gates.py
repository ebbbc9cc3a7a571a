"""Validation gates on a candidate's behaviour: schema, non-inferiority, latency, sanity.

Pure: arrays and numbers in, ``GateResult`` out, each with the numbers behind it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.events import GateResult
from shared.spec import ModelSpec

#: Two-sided 95 % normal quantile.
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class GatePolicy:
    """The thresholds a candidate is held to."""

    min_accuracy: float = 0.6
    non_inferiority_margin: float = 0.05
    latency_budget_ms: float = 25.0
    latency_samples: int = 200


def schema_gate(
    input_names: Sequence[str] | None, classes: Sequence[str], spec: ModelSpec
) -> GateResult:
    """Inputs are the spec's features in order and every class is one the spec knows."""
    problems = []
    if input_names is None:
        problems.append("no input signature logged")
    elif list(input_names) != list(spec.feature_names):
        problems.append(f"inputs {list(input_names)} ≠ spec {list(spec.feature_names)}")
    unknown = sorted(set(classes) - set(spec.classes))
    if unknown:
        problems.append(f"classes {unknown} not in spec {list(spec.classes)}")
    if problems:
        return GateResult(name="schema", passed=False, detail="; ".join(problems))
    detail = f"{len(spec.feature_names)} inputs and {len(classes)} classes match the spec"
    return GateResult(name="schema", passed=True, detail=detail)


def paired_difference(
    candidate_correct: Any, champion_correct: Any, z: float = Z_95
) -> tuple[float, float, float]:
    """Mean accuracy difference on the same rows and its normal confidence interval.

    >>> low, mean, high = paired_difference([1, 1, 0, 1], [1, 0, 0, 1])
    >>> round(mean, 3), round(low, 3) < mean < round(high, 3)
    (0.25, True)
    """
    diff = np.asarray(candidate_correct, dtype=float) - np.asarray(champion_correct, dtype=float)
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
    return mean - z * se, mean, mean + z * se


def non_inferiority_gate(
    candidate_correct: Any, champion_correct: Any, champion_version: str, margin: float
) -> GateResult:
    """Candidate's accuracy minus the champion's, on the same fresh holdout, is > −margin.

    Passes when the lower end of the 95 % confidence interval of the paired
    difference lies above ``-margin``: the candidate is shown not to be worse
    by more than the margin, not merely "not shown worse".
    """
    low, mean, high = paired_difference(candidate_correct, champion_correct)
    candidate, champion = float(np.mean(candidate_correct)), float(np.mean(champion_correct))
    passed = low > -margin
    detail = (
        f"accuracy {candidate:.4f} vs champion v{champion_version} {champion:.4f} on "
        f"{len(candidate_correct)} fresh holdout rows: Δ {mean:+.4f}, 95% CI "
        f"[{low:+.4f}, {high:+.4f}], margin {margin:.4f} → lower bound "
        f"{'>' if passed else '≤'} {-margin:+.4f}"
    )
    return GateResult(name="non_inferiority", passed=passed, detail=detail)


def no_champion_gate() -> GateResult:
    """Non-inferiority when there is nothing to compare with."""
    return GateResult(name="non_inferiority", passed=True, detail="no champion yet")


def latency_gate(samples_ms: Sequence[float], budget_ms: float) -> GateResult:
    """95th percentile of single-row prediction time within ``budget_ms``."""
    p95 = float(np.percentile(samples_ms, 95))
    p50 = float(np.percentile(samples_ms, 50))
    passed = p95 <= budget_ms
    detail = (
        f"p95 {p95:.3f} ms {'≤' if passed else '>'} budget {budget_ms:.3f} ms "
        f"(p50 {p50:.3f} ms over {len(samples_ms)} single-row calls, best of 3 each)"
    )
    return GateResult(name="latency", passed=passed, detail=detail)


def finite_output_gate(probabilities: Any) -> GateResult:
    """Every probability finite, in [0, 1], and each row summing to 1."""
    p = np.asarray(probabilities, dtype=float)
    bad_values = int((~np.isfinite(p)).sum())
    bad_rows = int((np.abs(p.sum(axis=1) - 1) > 1e-4).sum()) if bad_values == 0 else len(p)
    passed = bad_values == 0 and bad_rows == 0 and bool(((p >= 0) & (p <= 1)).all())
    detail = f"{bad_values} NaN/inf values, {bad_rows} rows not summing to 1 of {len(p)}"
    return GateResult(name="finite_output", passed=passed, detail=detail)


def determinism_gate(first: Any, second: Any) -> GateResult:
    """The same input twice gives the same probabilities."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    largest = float(np.max(np.abs(a - b))) if a.shape == b.shape else math.inf
    passed = largest == 0.0
    detail = f"max |Δp| {largest:.3g} over {len(a)} rows predicted twice"
    return GateResult(name="determinism", passed=passed, detail=detail)
