"""Where local infrastructure runs: ports, run directory, cache, and the endpoints it exposes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from flywheel.infra.kafka_auth import ADMIN, KafkaCredentials
from shared.kafka_security import KafkaConnection

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_cache_dir() -> Path:
    """Return the per-user cache for downloaded jars."""
    return Path.home() / ".cache" / "flywheel"


@dataclass(frozen=True)
class InfraConfig:
    """Ports and directories of the local Kafka, Redis and MLflow."""

    run_dir: Path
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    redis_port: int = 6379
    mlflow_port: int = 5000
    kafka_version: str = "3.9.1"
    cache_dir: Path = field(default_factory=_default_cache_dir)
    mlflow_backend_store_uri: str | None = None
    mlflow_artifacts_destination: str | None = None
    kafka_auth: bool = True
    """SASL/SCRAM and ACLs on the broker; off only for a stack that must take anyone."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InfraConfig:
        """Build the config from ``FLYWHEEL_*`` environment variables, with defaults."""
        env = os.environ if env is None else env
        return cls(
            run_dir=Path(env.get("FLYWHEEL_RUN_DIR", str(REPO_ROOT / ".flywheel"))).resolve(),
            kafka_port=int(env.get("FLYWHEEL_KAFKA_PORT", "9092")),
            kafka_controller_port=int(env.get("FLYWHEEL_KAFKA_CONTROLLER_PORT", "9093")),
            redis_port=int(env.get("FLYWHEEL_REDIS_PORT", "6379")),
            mlflow_port=int(env.get("FLYWHEEL_MLFLOW_PORT", "5000")),
            mlflow_backend_store_uri=env.get("FLYWHEEL_MLFLOW_BACKEND_STORE_URI") or None,
            mlflow_artifacts_destination=env.get("FLYWHEEL_MLFLOW_ARTIFACTS_DESTINATION") or None,
            kafka_auth=env.get("FLYWHEEL_KAFKA_AUTH", "1").lower() not in {"0", "false", "no"},
        )

    @property
    def kafka_bootstrap(self) -> str:
        """Kafka bootstrap address clients connect to."""
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        """Redis URL clients connect to."""
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def mlflow_uri(self) -> str:
        """MLflow tracking URI clients connect to."""
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def kafka_dir(self) -> Path:
        """Where the broker's settings, credentials, data and logs live."""
        return self.run_dir / "kafka"

    def endpoints(self, kafka_credentials: KafkaCredentials | None = None) -> Endpoints:
        """Return the endpoints this config's infrastructure serves on."""
        return Endpoints(
            self.kafka_bootstrap, self.redis_url, self.mlflow_uri, self.run_dir, kafka_credentials
        )


@dataclass(frozen=True)
class Endpoints:
    """Where running infrastructure answers, and the run directory for logs, pids and data."""

    kafka_bootstrap: str
    redis_url: str
    mlflow_uri: str
    run_dir: Path
    kafka_credentials: KafkaCredentials | None = None
    """The broker's principals and passwords; None: it takes anonymous clients."""

    @property
    def kafka(self) -> KafkaConnection:
        """The broker as the operator (flywheel-admin) reaches it: the CLI's and tests' clients."""
        return self.kafka_for(ADMIN)

    def kafka_for(self, principal: str) -> KafkaConnection:
        """The broker as ``principal`` (a service name) reaches it."""
        if self.kafka_credentials is None:
            return KafkaConnection(self.kafka_bootstrap)
        return KafkaConnection(self.kafka_bootstrap, self.kafka_credentials.security(principal))

    def with_redis_db(self, db: int) -> Endpoints:
        """The same endpoints on Redis database ``db``: one stack's state apart on a shared server.

        Routing, experiments and windows live under fixed key names, so two stacks on
        one database would read each other's.

        >>> e = Endpoints("k:9092", "redis://127.0.0.1:6379/0", "http://m", Path("."))
        >>> e.with_redis_db(3).redis_url
        'redis://127.0.0.1:6379/3'
        >>> Endpoints("k", "redis://h:1", "m", Path(".")).with_redis_db(2).redis_url
        'redis://h:1/2'
        """
        url = urlsplit(self.redis_url)._replace(path=f"/{db}").geturl()
        return replace(self, redis_url=url)
