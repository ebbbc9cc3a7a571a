"""The registry's pure core: gates with their numbers, tags, the alias decision."""

from __future__ import annotations

import pytest

from services.registry.core import (
    accuracy_gate,
    choose_alias,
    evaluate_gates,
    failed,
    finite_metrics_gate,
    gate_tags,
    lineage_tags,
)
from services.registry.gates import GatePolicy
from shared.events import ModelMetrics, ModelTrained
from shared.spec import load_spec

SPEC, POLICY = load_spec(), GatePolicy(min_accuracy=0.6)


def _metrics(accuracy: float, log_loss: float | None = 0.5) -> ModelMetrics:
    return ModelMetrics(accuracy=accuracy, macro_f1=0.7, log_loss=log_loss, validation_rows=200)


@pytest.mark.parametrize(
    ("accuracy", "passed"), [(0.82, True), (0.6, True), (0.5999, False), (0.31, False)]
)
def test_accuracy_gate_compares_against_the_threshold(accuracy: float, passed: bool) -> None:
    gate = accuracy_gate(_metrics(accuracy), 0.6)
    assert gate.name == "accuracy"
    assert gate.passed is passed
    assert f"{accuracy:.4f}" in gate.detail
    assert "0.6000" in gate.detail


def test_nan_or_infinite_metrics_fail_and_are_named() -> None:
    gate = finite_metrics_gate(_metrics(0.9, log_loss=float("nan")))
    assert not gate.passed
    assert "log_loss" in gate.detail
    extra = ModelMetrics(accuracy=0.9, macro_f1=0.8, validation_rows=1, brier=float("inf"))
    assert "brier" in finite_metrics_gate(extra).detail
    assert finite_metrics_gate(_metrics(0.9)).passed


def test_evaluate_gates_reports_every_failure() -> None:
    gates = evaluate_gates(_metrics(0.4, log_loss=float("nan")), POLICY, SPEC)
    assert [g.name for g in failed(gates)] == ["accuracy", "finite_metrics"]
    assert failed(evaluate_gates(_metrics(0.9), POLICY, SPEC)) == ()


def test_gate_tags_carry_outcome_and_numbers() -> None:
    tags = gate_tags(evaluate_gates(_metrics(0.42), POLICY, SPEC))
    assert tags["gate.accuracy"] == "failed: accuracy 0.4200 < 0.6000"
    assert tags["gate.finite_metrics"].startswith("passed: ")


def test_lineage_tags_trace_run_data_and_loop_turn() -> None:
    event = ModelTrained(
        producer="trainer",
        model_name="m",
        run_id="r1",
        model_uri="runs:/r1/model",
        algorithm="logistic_regression",
        metrics=_metrics(0.8),
        data_version="d" * 64,
        trigger="drift",
    )
    tags = lineage_tags(event)
    assert tags["flywheel.run_id"] == "r1"
    assert tags["flywheel.data_version"] == "d" * 64
    assert tags["flywheel.correlation_id"] == event.correlation_id
    assert tags["flywheel.trigger"] == "drift"


def test_first_approved_version_is_champion_then_challengers() -> None:
    assert choose_alias(None, "1") == "champion"
    assert choose_alias("1", "2") == "challenger"
    assert choose_alias("1", "3") == "challenger"
    # Redelivered approval of the current champion keeps it champion.
    assert choose_alias("1", "1") == "champion"
