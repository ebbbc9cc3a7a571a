"""The router's decisions: champion-only state, opening and superseding experiments."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from services.router.core import Experiment, decide_on_approval, experiment_id_for, is_newer
from services.router.core.decision import (
    ArmStats,
    DecisionConfig,
    ExperimentStats,
    GuardrailResult,
    guardrail_results,
)
from services.router.core.experiment import ExperimentPlan
from shared.events import ModelApproved, ModelMetrics, Role

METRICS = ModelMetrics(accuracy=0.8, macro_f1=0.75, validation_rows=100)
PLAN = ExperimentPlan(shares=(0.1, 0.5))


def approval(alias: Role, version: str, champion: str = "1") -> ModelApproved:
    return ModelApproved(
        producer="registry",
        model_name="customer-segment",
        version=version,
        run_id=f"run-{version}",
        alias=alias,
        champion_version=champion,
        metrics=METRICS,
    )


def running(challenger: str = "2", champion: str = "1") -> Experiment:
    return Experiment(
        experiment_id="exp-old",
        model_name="customer-segment",
        status="running",
        champion_version=champion,
        challenger_version=challenger,
        challenger_share=0.3,
        opened_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_first_champion_serves_alone() -> None:
    event = approval("champion", "1")
    (state,) = decide_on_approval(None, event, PLAN)
    assert state.status == "champion_only"
    assert state.champion_version == "1"
    assert state.challenger_version is None
    assert state.challenger_share == 0.0
    assert state.experiment_id == experiment_id_for(event)


def test_champion_approval_does_not_disturb_a_running_experiment() -> None:
    assert decide_on_approval(running(), approval("champion", "5"), PLAN) == ()


def test_same_champion_again_changes_nothing() -> None:
    (state,) = decide_on_approval(None, approval("champion", "1"), PLAN)
    assert decide_on_approval(state, approval("champion", "1"), PLAN) == ()


def test_challenger_opens_an_experiment_at_the_initial_share() -> None:
    event = approval("challenger", "2", champion="1")
    (state,) = decide_on_approval(None, event, PLAN)
    assert state.status == "running"
    assert (state.champion_version, state.challenger_version) == ("1", "2")
    assert state.challenger_share == pytest.approx(0.1)
    assert state.opened_at == event.occurred_at
    assert state.ramp_step == 0


def test_newer_challenger_supersedes_the_open_experiment_first() -> None:
    current = running(challenger="2")
    old, new = decide_on_approval(current, approval("challenger", "3"), PLAN)
    assert old.experiment_id == "exp-old"
    assert old.status == "superseded"
    assert old.challenger_version == "2"
    assert new.status == "running"
    assert new.challenger_version == "3"
    assert new.experiment_id != old.experiment_id


@pytest.mark.parametrize("version", ["2", "1"])
def test_same_or_older_challenger_changes_nothing(version: str) -> None:
    assert decide_on_approval(running(challenger="2"), approval("challenger", version), PLAN) == ()


def test_experiment_id_is_stable_per_approval_and_differs_between_approvals() -> None:
    event = approval("challenger", "2")
    first = decide_on_approval(None, event, PLAN)
    again = decide_on_approval(None, event, PLAN)
    other = decide_on_approval(None, approval("challenger", "2"), PLAN)
    assert first[0].experiment_id == again[0].experiment_id
    assert first[0].experiment_id != other[0].experiment_id


def test_versions_compare_numerically() -> None:
    assert is_newer("10", "9")
    assert not is_newer("9", "10")


def _latency_arm(geometric_mean_ms: float, n: int = 2000, sd: float = 0.5) -> ArmStats:
    mu = math.log(geometric_mean_ms)
    return ArmStats(latency_n=n, log_latency_sum=n * mu, log_latency_sumsq=n * (mu * mu + sd * sd))


def _latency_result(champion_ms: float, challenger_ms: float) -> GuardrailResult:
    stats = ExperimentStats.single(_latency_arm(champion_ms), _latency_arm(challenger_ms), 0.5)
    (result,) = [
        g for g in guardrail_results(stats, DecisionConfig(), {}) if g.name == "log_latency"
    ]
    return result


def test_a_slow_down_of_microseconds_never_harms() -> None:
    result = _latency_result(0.15, 0.25)  # 67 % slower, 0.1 ms
    assert not result.harmed
    assert result.non_inferior


def test_a_slow_down_of_milliseconds_harms() -> None:
    result = _latency_result(5.0, 20.0)  # 15 ms and 4× slower
    assert result.harmed
    assert not result.non_inferior
