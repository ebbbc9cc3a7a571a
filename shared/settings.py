"""Settings every service shares: where Kafka, Redis and MLflow live, and where data sits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kafka_security import KafkaConnection, KafkaSecurity, SaslMechanism, SecurityProtocol
from shared.topics import Compression, FewerPartitions, TopicPolicy

DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_MLFLOW = "http://127.0.0.1:5000"

#: ``REDIS_CLUSTER``: use Redis Cluster, one server, or ask the server which it is.
RedisClusterMode = Literal["true", "false", "auto"]

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
    redis_cluster: RedisClusterMode = Field("auto", validation_alias=AliasChoices("REDIS_CLUSTER"))
    """``true``: Redis Cluster (``REDIS_URL`` names any node); ``false``: one server;
    ``auto``: asks ``INFO cluster`` at start (one server when Redis does not answer)."""
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
    kafka_partitions: int = Field(12, ge=1, validation_alias=AliasChoices("KAFKA_PARTITIONS"))
    """Partitions of every Flywheel topic: the most replicas of one service that share work."""
    kafka_replication_factor: int = Field(
        1, ge=1, validation_alias=AliasChoices("KAFKA_REPLICATION_FACTOR")
    )
    """Copies of each partition (1 on the local single broker; 3 on a production cluster)."""
    kafka_min_insync_replicas: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("KAFKA_MIN_INSYNC_REPLICAS")
    )
    """Replicas that must hold a write before it is acknowledged; unset: replication − 1."""
    kafka_compression: Compression = Field(
        "zstd", validation_alias=AliasChoices("KAFKA_COMPRESSION")
    )
    """Compression of what the services produce and of the topics they create: zstd or lz4."""
    kafka_traffic_retention_s: int = Field(
        7 * 24 * 3600, ge=1, validation_alias=AliasChoices("KAFKA_TRAFFIC_RETENTION_S")
    )
    """Retention of prediction-logged, prediction-failed and feedback-received."""
    kafka_state_retention_s: int = Field(
        30 * 24 * 3600, ge=1, validation_alias=AliasChoices("KAFKA_STATE_RETENTION_S")
    )
    """Retention of the lifecycle topics (trainings, approvals, promotions, routing, drift)."""
    kafka_dead_letter_retention_s: int = Field(
        14 * 24 * 3600, ge=1, validation_alias=AliasChoices("KAFKA_DEAD_LETTER_RETENTION_S")
    )
    """Retention of the dead-letter topics (``<topic>.dlq``)."""
    kafka_on_fewer_partitions: FewerPartitions = Field(
        "error", validation_alias=AliasChoices("KAFKA_ON_FEWER_PARTITIONS")
    )
    """An existing topic with fewer partitions than planned: error (refuse to start) or warn."""
    kafka_traffic_lookback_s: float = Field(
        3600.0, ge=0, validation_alias=AliasChoices("KAFKA_TRAFFIC_LOOKBACK_S")
    )
    """How far back a new consumer group reads a traffic topic (0: from the end)."""

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

    def topic_policy(self) -> TopicPolicy:
        """How Flywheel's topics are to be: partitions, replication, retention, compression."""
        return TopicPolicy(
            partitions=self.kafka_partitions,
            replication_factor=self.kafka_replication_factor,
            min_insync_replicas=self.kafka_min_insync_replicas,
            compression=self.kafka_compression,
            traffic_retention_s=self.kafka_traffic_retention_s,
            state_retention_s=self.kafka_state_retention_s,
            dead_letter_retention_s=self.kafka_dead_letter_retention_s,
            on_fewer_partitions=self.kafka_on_fewer_partitions,
        )
