"""Settings every service shares: where Kafka, Redis and MLflow live, and where data sits."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kafka_security import KafkaConnection, KafkaSecurity, SaslMechanism, SecurityProtocol

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
    kafka_security_protocol: SecurityProtocol | None = Field(
        None, validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL")
    )
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; unset: SASL_PLAINTEXT with a username."""
    kafka_sasl_mechanism: SaslMechanism = Field(
        "SCRAM-SHA-512", validation_alias=AliasChoices("KAFKA_SASL_MECHANISM")
    )
    """SASL mechanism: SCRAM-SHA-512 (the local stack's), SCRAM-SHA-256 or PLAIN."""
    kafka_sasl_username: str = Field("", validation_alias=AliasChoices("KAFKA_SASL_USERNAME"))
    """Kafka principal this process authenticates as (its service name on the local stack)."""
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("KAFKA_SASL_PASSWORD")
    )
    """That principal's password."""
    kafka_ssl_cafile: Path | None = Field(None, validation_alias=AliasChoices("KAFKA_SSL_CAFILE"))
    """CA bundle that signed the broker's certificate (SSL and SASL_SSL); system CAs if unset."""
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

    def kafka_connection(self) -> KafkaConnection:
        """The broker's address and how this process authenticates to it."""
        username = self.kafka_sasl_username
        protocol = self.kafka_security_protocol or ("SASL_PLAINTEXT" if username else "PLAINTEXT")
        security = KafkaSecurity(
            protocol=protocol,
            mechanism=self.kafka_sasl_mechanism,
            username=username,
            password=self.kafka_sasl_password.get_secret_value(),
            ca_file=self.kafka_ssl_cafile,
        )
        return KafkaConnection(self.kafka_bootstrap_servers, security)
