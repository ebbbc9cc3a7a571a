"""Registry settings, read from ``REGISTRY_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.registry.gates import GatePolicy
from shared.settings import SERVICE_PORTS, BaseServiceSettings


class Settings(BaseServiceSettings):
    """The gates a candidate must pass to be approved."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore", frozen=True)

    port: int = SERVICE_PORTS["registry"]
    """HTTP port of the registry (versions, health, readiness, metrics)."""
    min_accuracy: float = Field(0.6, ge=0, le=1)
    """Lowest validation accuracy a candidate may have to be approved."""
    non_inferiority_margin: float = Field(0.05, ge=0, le=1)
    """How much lower than the champion's accuracy (CI lower bound) a candidate may be."""
    min_r2: float = Field(0.0, le=1)
    """Regression: lowest validation R² a candidate may have (0: no better than the mean)."""
    max_rmse: float | None = Field(None, gt=0)
    """Regression: highest validation RMSE, in the label's unit (unset: no ceiling)."""
    regression_margin: float = Field(0.05, ge=0)
    """Regression: how far above the champion's RMSE and MAE (relative, CI upper bound) a
    candidate's may be."""
    latency_budget_ms: float = Field(25.0, gt=0)
    """Budget for the p95 of single-row prediction time (per-row best of 3), in milliseconds."""
    latency_samples: int = Field(200, ge=20)
    """Single-row predictions timed for the latency gate."""
    bento_export: bool = True
    """Import every approved version into the BentoML model store."""
    bento_home: Path | None = None
    """BentoML store directory (BENTOML_HOME); ``<FLYWHEEL_DATA_DIR>/bentoml`` when unset."""
    admin_token: SecretStr | None = None
    """Bearer token for promote and rollback (``flywheel up`` passes ``<run dir>/admin-token``);
    without one they always answer 401."""

    def to_config(self) -> GatePolicy:
        """The thresholds every candidate is held to."""
        return GatePolicy(
            min_accuracy=self.min_accuracy,
            non_inferiority_margin=self.non_inferiority_margin,
            min_r2=self.min_r2,
            max_rmse=self.max_rmse,
            regression_margin=self.regression_margin,
            latency_budget_ms=self.latency_budget_ms,
            latency_samples=self.latency_samples,
        )
