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
    min_r2: float = 0.0
    """Regression: lowest validation R² (0: no better than predicting the mean)."""
    max_rmse: float | None = None
    """Regression: highest validation RMSE, in the label's unit (None: no ceiling)."""
    regression_margin: float = 0.05
    """Regression: how far above the champion's RMSE and MAE (relative, CI upper bound) a
    candidate's may be."""


def schema_gate(
    input_names: Sequence[str] | None, classes: Sequence[str], spec: ModelSpec
) -> GateResult:
    """Inputs are the spec's features in order and every class is one the spec knows.

    A model logged without an input signature passes on its inputs: it has just been
    scored on the holdout's spec features, by name, which is how it is served.
    """
    problems = []
    if input_names is not None and list(input_names) != list(spec.feature_names):
        problems.append(f"inputs {list(input_names)} ≠ spec {list(spec.feature_names)}")
    unknown = sorted(set(classes) - set(spec.classes))
    if unknown:
        problems.append(f"classes {unknown} not in spec {list(spec.classes)}")
    if problems:
        return GateResult(name="schema", passed=False, detail="; ".join(problems))
    inputs = f"{len(spec.feature_names)} inputs"
    matched = (
        f"{inputs} match" if spec.is_regression else f"{inputs} and {len(classes)} classes match"
    )
    unsigned = " (no input signature logged: scored by feature name)" if input_names is None else ""
    return GateResult(name="schema", passed=True, detail=f"{matched} the spec{unsigned}")


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


def loss_comparison(
    metric: str, candidate_loss: Any, champion_loss: Any, allowed: float
) -> tuple[bool, str]:
    """Whether the candidate's mean per-row loss is shown at most ``allowed`` above the
    champion's on the same rows (upper end of the paired 95 % CI), and the numbers.

    >>> passed, detail = loss_comparison("MAE", [1.0, 2.0, 1.5], [1.0, 2.0, 1.5], 0.1)
    >>> passed, detail.split(": ")[1]
    (True, 'Δ absolute error +0.0000, 95% CI [+0.0000, +0.0000] ≤ allowed +0.1000')
    """
    low, mean, high = paired_difference(candidate_loss, champion_loss)
    passed = high <= allowed
    candidate, champion = _summary(metric, candidate_loss), _summary(metric, champion_loss)
    loss = "squared error" if metric == "RMSE" else "absolute error"
    detail = (
        f"{metric} {candidate:.4f} vs {champion:.4f}: Δ {loss} {mean:+.4f}, 95% CI "
        f"[{low:+.4f}, {high:+.4f}] {'≤' if passed else '>'} allowed {allowed:+.4f}"
    )
    return passed, detail


def _summary(metric: str, loss: Any) -> float:
    mean = float(np.mean(loss))
    return math.sqrt(mean) if metric == "RMSE" else mean


def regression_non_inferiority_gate(
    candidate: Any, champion: Any, truth: Any, champion_version: str, margin: float
) -> GateResult:
    """Candidate's RMSE and MAE, paired with the champion's on the same fresh holdout, are
    each shown at most ``margin`` (relative) above the champion's.

    RMSE compares mean squared errors: RMSE within (1 + margin) × the champion's is MSE
    within (1 + margin)² × its MSE. MAE compares absolute errors, within (1 + margin) ×.
    """
    y = np.asarray(truth, dtype=float)
    ours, theirs = np.asarray(candidate, dtype=float) - y, np.asarray(champion, dtype=float) - y
    allowed_mse = ((1 + margin) ** 2 - 1) * float(np.mean(theirs**2))
    rmse_ok, rmse = loss_comparison("RMSE", ours**2, theirs**2, allowed_mse)
    allowed_mae = margin * float(np.mean(np.abs(theirs)))
    mae_ok, mae = loss_comparison("MAE", np.abs(ours), np.abs(theirs), allowed_mae)
    detail = (
        f"vs champion v{champion_version} on {len(y)} fresh holdout rows, margin "
        f"{margin:.0%} above the champion's: {rmse}; {mae}"
    )
    return GateResult(name="non_inferiority", passed=rmse_ok and mae_ok, detail=detail)


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


def finite_values_gate(values: Any) -> GateResult:
    """Regression: every predicted value finite."""
    v = np.asarray(values, dtype=float)
    bad = int((~np.isfinite(v)).sum())
    detail = f"{bad} NaN/inf values of {len(v)}"
    return GateResult(name="finite_output", passed=bad == 0, detail=detail)


def determinism_gate(first: Any, second: Any) -> GateResult:
    """The same input twice gives the same probabilities (or values)."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    largest = float(np.max(np.abs(a - b))) if a.shape == b.shape else math.inf
    passed = largest == 0.0
    detail = f"max |Δ| {largest:.3g} over {len(a)} rows predicted twice"
    return GateResult(name="determinism", passed=passed, detail=detail)
