"""Monitor settings (env prefix ``MONITOR_``)."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import SettingsConfigDict

from services.monitor.core import DriftConfig
from shared.settings import SERVICE_PORTS, BaseServiceSettings


class Settings(BaseServiceSettings):
    """How the monitor windows live traffic and decides drift."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_", extra="ignore", frozen=True)

    port: int = SERVICE_PORTS["monitor"]
    """HTTP port for health, readiness and metrics."""
    window_size: int = 1000
    """Predictions per tumbling window."""
    alpha: float = 0.05
    """False-alarm rate per window across all features (after the correction)."""
    correction: Literal["bonferroni", "bh"] = "bonferroni"
    """Multiple-testing correction across features: Bonferroni or Benjamini–Hochberg."""
    persistence: int = 2
    """Consecutive drifted windows needed before drift is reported."""
    strong_alpha: float = 1e-4
    """A window this far beyond chance (across features) alarms without waiting."""
    pooled_windows: int = 8
    """Windows pooled for the slow test that finds small lasting shifts (0 turns it off)."""
    pooled_alpha: float = 2e-3
    """Level of the pooled test per look, across features."""
    cooldown_windows: int = 10
    """Windows to stay quiet after a report, so one shift is one alarm."""
    reference_refresh_s: float = 30.0
    """How often each model's champion alias is looked up again for a new reference."""
    hold_s: float = 30.0
    """How long a model whose reference failed to load has its events fail at once."""
    batch_size: int = 500
    """Most prediction-logged events consumed in one batch."""
    batch_timeout_ms: int = 200
    """Longest wait to fill a batch, in milliseconds."""
    accuracy_min_drop: float = 0.05
    """Accuracy drop (absolute) the concept-drift CUSUM is tuned to detect."""
    accuracy_arl: float = 10_000.0
    """Mean labelled outcomes between false concept-drift alarms on an unchanged model."""
    accuracy_rolling: int = 500
    """Labelled outcomes in the rolling accuracy (or a regressor's loss) reported per variant."""
    loss_min_rise: float = 0.5
    """Relative rise of a regressor's mean loss the concept-drift CUSUM is tuned to detect."""
    loss_arl: float = 10_000.0
    """Mean labelled outcomes between false loss alarms on an unchanged regressor."""

    def to_config(self) -> DriftConfig:
        """The drift configuration every model's monitor follows."""
        return DriftConfig(
            window_size=self.window_size,
            alpha=self.alpha,
            correction=self.correction,
            persistence=self.persistence,
            strong_alpha=self.strong_alpha,
            pooled_windows=self.pooled_windows,
            pooled_alpha=self.pooled_alpha,
            cooldown_windows=self.cooldown_windows,
            reference_refresh_s=self.reference_refresh_s,
            hold_s=self.hold_s,
            recent_ids=2 * self.batch_size,
            accuracy_min_drop=self.accuracy_min_drop,
            accuracy_arl=self.accuracy_arl,
            accuracy_rolling=self.accuracy_rolling,
            loss_min_rise=self.loss_min_rise,
            loss_arl=self.loss_arl,
        )
