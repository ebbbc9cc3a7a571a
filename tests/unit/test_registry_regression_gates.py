"""The registry's gates for a regression model: reported metrics, task, outputs, and
non-inferiority on RMSE and MAE with their paired intervals."""

from __future__ import annotations

import numpy as np
import pytest

from services.registry.core import evaluate_gates, failed, r2_gate, rmse_gate, task_gate
from services.registry.gates import (
    GatePolicy,
    finite_values_gate,
    regression_non_inferiority_gate,
    schema_gate,
)
from shared.events import ModelMetrics
from shared.spec import load_spec

CLASSIFIER = load_spec()
REGRESSOR = CLASSIFIER.model_copy(
    update={"name": "spend", "label": "monthly_spend", "task": "regression", "classes": ()}
)


def _metrics(rmse: float = 1.0, mae: float = 0.8, r2: float | None = 0.6) -> ModelMetrics:
    return ModelMetrics(rmse=rmse, mae=mae, r2=r2, validation_rows=300)


@pytest.mark.parametrize(("r2", "passed"), [(0.6, True), (0.0, True), (-0.01, False)])
def test_r2_floor(r2: float, passed: bool) -> None:
    gate = r2_gate(_metrics(r2=r2), 0.0)
    assert (gate.name, gate.passed) == ("r2", passed)
    assert f"{r2:.4f}" in gate.detail


def test_a_regressor_without_r2_fails_the_floor_naming_it() -> None:
    gate = r2_gate(_metrics(r2=None), 0.0)
    assert not gate.passed
    assert gate.detail == "no r2 in the metrics"


def test_rmse_ceiling_only_when_configured() -> None:
    assert rmse_gate(_metrics(rmse=50.0), None).passed
    assert "no ceiling" in rmse_gate(_metrics(rmse=50.0), None).detail
    gate = rmse_gate(_metrics(rmse=50.0), 40.0)
    assert not gate.passed
    assert gate.detail == "rmse 50.0000 > 40.0000"
    assert rmse_gate(_metrics(rmse=39.0), 40.0).passed


def test_regression_metrics_go_through_their_own_gates_and_the_finite_check() -> None:
    policy = GatePolicy(min_r2=0.5, max_rmse=2.0)
    gates = evaluate_gates(_metrics(r2=float("nan")), policy, REGRESSOR)
    assert [g.name for g in gates] == ["r2", "rmse", "finite_metrics"]
    assert [g.name for g in failed(gates)] == ["r2", "finite_metrics"]
    assert "r2" in gates[2].detail
    assert failed(evaluate_gates(_metrics(), policy, REGRESSOR)) == ()


def test_a_regressor_for_a_classification_spec_fails_the_task_gate_naming_both() -> None:
    gates = evaluate_gates(_metrics(), GatePolicy(), CLASSIFIER)
    [task] = failed(gates)
    assert task.name == "task"
    assert "task changed" in task.detail
    assert "regression metrics" in task.detail
    assert "classification model" in task.detail
    classifier = ModelMetrics(accuracy=0.9, macro_f1=0.9, validation_rows=10)
    assert not task_gate(classifier, REGRESSOR).passed
    assert task_gate(classifier, CLASSIFIER).passed


def test_schema_of_a_regressor_names_inputs_only() -> None:
    gate = schema_gate(list(REGRESSOR.feature_names), (), REGRESSOR)
    assert gate.passed
    assert gate.detail == "8 inputs match the spec"
    assert not schema_gate(["age"], (), REGRESSOR).passed


def test_a_model_without_a_signature_passes_schema_saying_so() -> None:
    gate = schema_gate(None, CLASSIFIER.classes, CLASSIFIER)
    assert gate.passed
    assert "no input signature logged" in gate.detail


def test_finite_values() -> None:
    assert finite_values_gate(np.array([1.0, 2.0])).passed
    gate = finite_values_gate(np.array([1.0, np.nan, np.inf]))
    assert not gate.passed
    assert gate.detail == "2 NaN/inf values of 3"


def _outcomes(seed: int = 0, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(100, 20, size=n)
    return truth, truth + rng.normal(0, 5, size=n)


def test_an_equal_regressor_is_non_inferior_with_both_intervals() -> None:
    truth, champion = _outcomes()
    candidate = champion + np.random.default_rng(1).normal(0, 0.1, size=len(truth))
    gate = regression_non_inferiority_gate(candidate, champion, truth, "3", 0.05)
    assert gate.passed, gate.detail
    assert gate.name == "non_inferiority"
    assert "vs champion v3 on 500 fresh holdout rows" in gate.detail
    assert "RMSE" in gate.detail
    assert "MAE" in gate.detail
    assert gate.detail.count("95% CI [") == 2


def test_a_worse_regressor_fails_non_inferiority_on_rmse_and_mae() -> None:
    truth, champion = _outcomes()
    candidate = truth + np.random.default_rng(2).normal(0, 8, size=len(truth))
    gate = regression_non_inferiority_gate(candidate, champion, truth, "1", 0.05)
    assert not gate.passed
    assert gate.detail.count("> allowed") == 2


def test_rmse_alone_can_fail_non_inferiority() -> None:
    # Same absolute errors on most rows, a few large misses: squared error notices first.
    truth = np.zeros(400)
    champion = np.full(400, 1.0)
    candidate = np.full(400, 1.0)
    candidate[:8] = 6.0
    gate = regression_non_inferiority_gate(candidate, champion, truth, "1", 0.20)
    assert not gate.passed
    rmse_part, mae_part = gate.detail.split("; ")[-2:]
    assert "RMSE" in rmse_part
    assert "> allowed" in rmse_part
    assert "≤ allowed" in mae_part


def test_a_better_regressor_passes() -> None:
    truth, champion = _outcomes()
    candidate = truth + np.random.default_rng(3).normal(0, 2, size=len(truth))
    assert regression_non_inferiority_gate(candidate, champion, truth, "1", 0.0).passed
