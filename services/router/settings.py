"""Router settings (``ROUTER_`` environment variables)."""

from __future__ import annotations

import math

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.router.core.decision import DecisionConfig
from services.router.core.experiment import DEFAULT_RAMP, ExperimentPlan
from services.router.core.outcomes import OutcomeWindow
from shared.settings import SERVICE_PORTS, BaseServiceSettings


class Settings(BaseServiceSettings):
    """How the router ramps experiments and decides them."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True)

    port: int = SERVICE_PORTS["router"]
    """HTTP port of the router (health, readiness, metrics, experiments and reports)."""
    ramp_shares: tuple[float, ...] = DEFAULT_RAMP
    """The challenger's share at each canary stage, as a JSON list (e.g. ``[0.05, 0.5]``)."""
    stage_min_labelled: int = Field(100, ge=0)
    """Challenger outcomes needed in a stage before the ramp advances."""
    look_every: int = Field(50, ge=1)
    """Labelled outcomes (both arms) between two looks."""
    max_duration_s: float = Field(7 * 24 * 3600.0, gt=0)
    """After this long without a verdict the experiment ends inconclusive."""
    metric: str = "accuracy"
    """A classifier's primary metric: ``accuracy`` (from labels) or ``reward`` (numeric
    feedback). A regressor's experiments compare its spec's loss whatever this says."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Error rate of the always-valid tests."""
    n_star: float = Field(2000.0, gt=0)
    """Units (both arms) at which the confidence sequence is tightest."""
    practical_minimum: float = 0.0
    """Smallest absolute lift worth promoting (a regressor's: a reduction of its mean loss)."""
    min_labelled_per_arm: int = Field(100, ge=2)
    """Labelled outcomes per arm before any verdict."""
    min_correct_per_arm: int = Field(25, ge=0)
    """Correct outcomes per arm before any verdict."""
    min_wrong_per_arm: int = Field(25, ge=0)
    """Wrong outcomes per arm before any verdict."""
    max_labelled_per_arm: int = Field(20_000, ge=2)
    """At this many outcomes per arm without a verdict: inconclusive, keep the champion."""
    error_rate_margin: float = Field(0.005, ge=0)
    """Tolerated increase of the error rate: its absolute floor (0.005 = half a point)."""
    error_rate_relative_margin: float = Field(0.5, ge=0)
    """Tolerated increase of the error rate as a share of the champion's (0.5: 1.5×)."""
    latency_slowdown: float = Field(1.2, gt=1)
    """Tolerated ratio of geometric-mean latencies (challenger / champion)."""
    latency_floor_ms: float = Field(5.0, ge=0)
    """A slow-down smaller than this many milliseconds never harms, whatever its ratio."""
    label_rate_margin: float = Field(0.05, ge=0)
    """Tolerated drop of the share of predictions labelled within their window (absolute)."""
    label_rate_relative_margin: float = Field(0.0, ge=0)
    """Tolerated label-rate drop as a share of the champion's (the wider margin applies)."""
    outcome_window_s: float = Field(30.0, gt=0)
    """A prediction's outcome counts once this many seconds have passed: labelled by then
    or unlabelled; later labels are ignored (fixed per experiment when it opens)."""
    outcome_window_predictions: int = Field(0, ge=0)
    """Or once this many later predictions of the experiment were routed (0: off)."""
    outcome_grace_s: float = Field(10.0, ge=0)
    """Allowed lateness: a closed window is counted this many seconds after it ends, so
    feedback still in the consumer's lag is not taken for missing (timeliness is judged
    on the events' own times)."""
    look_interval_s: float = Field(5.0, gt=0)
    """How often running experiments have their closed windows counted and are looked at."""
    look_wait_s: float = Field(10.0, gt=0)
    """How long an event or the periodic tick waits for one model's look before going on
    (the look carries on in the background): a stuck model never holds up the others."""

    def to_config(self) -> ExperimentPlan:
        """The plan every new experiment follows."""
        decision = DecisionConfig(
            metric="reward" if self.metric == "reward" else "accuracy",
            alpha=self.alpha,
            n_star=self.n_star,
            practical_minimum=self.practical_minimum,
            min_labelled_per_arm=self.min_labelled_per_arm,
            min_correct_per_arm=self.min_correct_per_arm,
            min_wrong_per_arm=self.min_wrong_per_arm,
            max_labelled_per_arm=self.max_labelled_per_arm,
            error_rate_margin=self.error_rate_margin,
            log_latency_margin=math.log(self.latency_slowdown),
            latency_floor_ms=self.latency_floor_ms,
            label_rate_margin=self.label_rate_margin,
            label_rate_relative_margin=self.label_rate_relative_margin,
            error_rate_relative_margin=self.error_rate_relative_margin,
        )
        return ExperimentPlan(
            shares=self.ramp_shares,
            stage_min_labelled=self.stage_min_labelled,
            look_every=self.look_every,
            max_duration_s=self.max_duration_s,
            decision=decision,
            outcome_window=OutcomeWindow(
                seconds=self.outcome_window_s,
                predictions=self.outcome_window_predictions,
                grace_seconds=self.outcome_grace_s,
            ),
        )
