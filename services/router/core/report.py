"""The A/B report of one experiment: everything a reader needs to check the decision."""

from __future__ import annotations

import math
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.router.core.decision import (
    ArmStats,
    Decision,
    ExperimentStats,
    GuardrailResult,
    MetricResult,
    SrmResult,
    evaluate,
    p95_ms,
)
from services.router.core.experiment import Experiment
from services.router.core.outcomes import OutcomeWindow
from services.router.core.stats import shifted_mean_var


class LookPoint(BaseModel):
    """One look, as the report's plot of the lift over time needs it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: AwareDatetime
    look: int
    challenger_share: float
    n_champion: int
    n_challenger: int
    diff: float
    ci_low: float
    ci_high: float
    fixed_ci_low: float
    fixed_ci_high: float
    relative_lift: float | None
    always_valid_p: float
    action: str


def look_point(experiment: Experiment, s: ExperimentStats, at: AwareDatetime) -> LookPoint | None:
    """The summary of ``experiment``'s latest look, or None before the primary metric exists."""
    decision = experiment.last_look
    if decision is None or decision.primary is None:
        return None
    primary = decision.primary
    return LookPoint(
        at=at,
        look=experiment.looks,
        challenger_share=experiment.challenger_share,
        n_champion=_outcomes(s.champion),
        n_challenger=_outcomes(s.challenger),
        diff=primary.diff,
        ci_low=primary.always_valid_ci[0],
        ci_high=primary.always_valid_ci[1],
        fixed_ci_low=primary.fixed_horizon_ci[0],
        fixed_ci_high=primary.fixed_horizon_ci[1],
        relative_lift=primary.relative_lift,
        always_valid_p=primary.always_valid_p,
        action=decision.action,
    )


def _outcomes(arm: ArmStats) -> int:
    return arm.outcomes


class ArmHealth(BaseModel):
    """What one arm served and how it did (pooled over periods: for reading, not deciding)."""

    version: str | None
    assigned: int
    requests: int
    errors: int
    closed: int
    labelled: int
    late: int
    label_rate: float
    accuracy: float | None
    mean_reward: float | None
    p95_latency_ms: float
    loss_outcomes: int = Field(0, description="A regressor's outcomes with a loss.")
    mean_loss: float | None = Field(None, description="Mean per-outcome loss (lower is better).")
    rmse: float | None = Field(None, description="√(mean squared error): loss squared_error.")
    mae: float | None = Field(None, description="Mean absolute error: loss absolute_error.")
    loss_overflow: int = Field(0, description="Losses too large for a float: not in the mean.")


class ExperimentReport(BaseModel):
    """The JSON report of ``GET /v1/experiments/{id}/report``."""

    experiment_id: str
    model_name: str
    status: str
    champion_version: str
    challenger_version: str | None
    challenger_share: float
    stage: int
    primary_metric: str = Field(
        description="What the experiment compares; losses: lower is better."
    )
    opened_at: AwareDatetime
    concluded_at: AwareDatetime | None
    looks: int
    decision: str | None
    reasons: tuple[str, ...]
    config: dict[str, Any]
    outcome_window: OutcomeWindow
    open_outcomes: int
    late_labels: int
    arms: dict[str, ArmHealth]
    srm: SrmResult
    primary: MetricResult | None
    guardrails: tuple[GuardrailResult, ...]
    sufficient_statistics: ExperimentStats
    history: list[LookPoint]


def _health(
    arm: ArmStats, version: str | None, s: ExperimentStats, experiment: Experiment
) -> ArmHealth:
    health = ArmHealth(
        version=version,
        assigned=arm.assigned,
        requests=arm.requests,
        errors=arm.errors,
        closed=arm.closed,
        labelled=arm.labelled,
        late=arm.late,
        label_rate=arm.outcomes / arm.closed if arm.closed else 0.0,
        accuracy=arm.accuracy if arm.labelled else None,
        mean_reward=arm.reward_sum / arm.reward_n if arm.reward_n else None,
        p95_latency_ms=p95_ms(arm),
        loss_outcomes=arm.loss_n,
        loss_overflow=arm.loss_overflow,
    )
    loss = experiment.plan.loss
    if loss is None or not arm.loss_n:
        return health
    mean = shifted_mean_var(arm.loss_n, arm.loss_sum, arm.loss_sumsq, s.loss_shift).mean
    size = {"rmse": math.sqrt(max(mean, 0.0))} if loss == "squared" else {"mae": mean}
    return health.model_copy(update={"mean_loss": mean, **size})


def build_report(
    experiment: Experiment, s: ExperimentStats, history: list[LookPoint]
) -> ExperimentReport:
    """The report: the last look's numbers (or a fresh look before the first one)."""
    decision: Decision = experiment.last_look or evaluate(
        s, experiment.plan.decision, experiment.bounds
    )
    return ExperimentReport(
        experiment_id=experiment.experiment_id,
        model_name=experiment.model_name,
        status=experiment.status,
        champion_version=experiment.champion_version,
        challenger_version=experiment.challenger_version,
        challenger_share=experiment.challenger_share,
        stage=experiment.ramp_step,
        primary_metric=experiment.plan.decision.metric,
        opened_at=experiment.opened_at,
        concluded_at=experiment.concluded_at,
        looks=experiment.looks,
        decision=experiment.decision,
        reasons=experiment.reasons,
        config=experiment.plan.model_dump(mode="json"),
        outcome_window=experiment.plan.outcome_window,
        open_outcomes=s.open_outcomes,
        late_labels=s.champion.late + s.challenger.late,
        arms={
            "champion": _health(s.champion, experiment.champion_version, s, experiment),
            "challenger": _health(s.challenger, experiment.challenger_version, s, experiment),
        },
        srm=decision.srm,
        primary=decision.primary,
        guardrails=decision.guardrails,
        sufficient_statistics=s,
        history=history,
    )
