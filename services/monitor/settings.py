"""Monitor settings (env prefix ``MONITOR_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import SERVICE_PORTS, BaseServiceSettings


class Settings(BaseServiceSettings):
    """How the monitor windows live traffic and decides drift."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_", extra="ignore", frozen=True)

    port: int = SERVICE_PORTS["monitor"]
    """HTTP port for health, readiness and metrics."""
    window_size: int = 1000
    """Predictions per tumbling window."""
    alpha: float = 0.05
    """Family-wise false-alarm rate per window, split across features (Bonferroni)."""
    persistence: int = 1
    """Consecutive drifted windows needed before drift is reported."""
    cooldown_windows: int = 10
    """Windows to stay quiet after a report, so one shift is one alarm."""
    reference_refresh_s: float = 30.0
    """How often the champion alias is looked up again for a new reference."""
