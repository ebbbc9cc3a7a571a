"""Registry settings, read from ``REGISTRY_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import SERVICE_PORTS, BaseServiceSettings


class Settings(BaseServiceSettings):
    """The gates a candidate must pass to be approved."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore", frozen=True)

    port: int = SERVICE_PORTS["registry"]
    """HTTP port of the registry (versions, health, readiness, metrics)."""
    min_accuracy: float = Field(0.6, ge=0, le=1)
    """Lowest validation accuracy a candidate may have to be approved."""
