"""Router settings (``ROUTER_`` environment variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import SERVICE_PORTS, BaseServiceSettings


class Settings(BaseServiceSettings):
    """How the router opens experiments."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True)

    port: int = SERVICE_PORTS["router"]
    """HTTP port of the router (health, readiness, metrics, routing table)."""
    initial_share: float = Field(0.1, ge=0.0, le=1.0)
    """Share of traffic a freshly approved challenger receives."""
