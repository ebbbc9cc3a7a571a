"""Local infrastructure without Docker: Kafka from Maven jars, redis-server, an MLflow server."""

from flywheel.infra.config import Endpoints, InfraConfig
from flywheel.infra.errors import InfraError, MissingToolError, PortTakenError, StartupError
from flywheel.infra.kafka import start_kafka
from flywheel.infra.mlflow import start_mlflow
from flywheel.infra.processes import ComponentStatus
from flywheel.infra.redis import start_redis
from flywheel.infra.stack import (
    INFRA,
    SERVICES,
    infra_status,
    service_ports_from_env,
    services_status,
    start_infra,
    start_services,
    stop_infra,
    stop_services,
)

__all__ = [
    "INFRA",
    "SERVICES",
    "ComponentStatus",
    "Endpoints",
    "InfraConfig",
    "InfraError",
    "MissingToolError",
    "PortTakenError",
    "StartupError",
    "infra_status",
    "service_ports_from_env",
    "services_status",
    "start_infra",
    "start_kafka",
    "start_mlflow",
    "start_redis",
    "start_services",
    "stop_infra",
    "stop_services",
]
