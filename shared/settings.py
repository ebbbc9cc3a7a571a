"""Settings every service shares: where Kafka, Redis and MLflow live, and where data sits."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_MLFLOW = "http://127.0.0.1:5000"

#: Default HTTP port of each service; ``<NAME>_PORT`` overrides it.
SERVICE_PORTS: dict[str, int] = {
    "gateway": 8000,
    "router": 8001,
    "registry": 8002,
    "trainer": 8003,
    "monitor": 8004,
}


class BaseServiceSettings(BaseSettings):
    """Connection settings read from unprefixed environment variables, shared by all services."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(
        DEFAULT_KAFKA, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    """Kafka bootstrap servers, comma separated."""
    redis_url: str = Field(DEFAULT_REDIS, validation_alias=AliasChoices("REDIS_URL"))
    """Redis URL for idempotency markers, locks and service state."""
    mlflow_tracking_uri: str = Field(
        DEFAULT_MLFLOW, validation_alias=AliasChoices("MLFLOW_TRACKING_URI")
    )
    """MLflow tracking server URI (runs, registry, artifacts)."""
    data_dir: Path = Field(Path("data"), validation_alias=AliasChoices("FLYWHEEL_DATA_DIR"))
    """Directory where dataset batches live (referenced from events by URI)."""
    model_spec_path: Path | None = Field(None, validation_alias=AliasChoices("FLYWHEEL_MODEL_SPEC"))
    """Model spec file; the packaged default spec when unset."""
    model_name: str = Field(
        "customer-segment", validation_alias=AliasChoices("FLYWHEEL_MODEL_NAME")
    )
    """Registered model name in MLflow."""
    host: str = "127.0.0.1"
    """Interface the service's HTTP server binds to."""
    port: int = 0
    """HTTP port of the service (health, readiness, metrics)."""
    log_level: str = Field("INFO", validation_alias=AliasChoices("LOG_LEVEL"))
    """Log level of the service's JSON logs."""
    idempotency_ttl_s: int = Field(
        7 * 24 * 3600, validation_alias=AliasChoices("IDEMPOTENCY_TTL_S")
    )
    """How long a handled event id is remembered, in seconds."""
    max_attempts: int = Field(3, validation_alias=AliasChoices("HANDLER_MAX_ATTEMPTS"))
    """Attempts of a failing handler before its event is dead-lettered."""
