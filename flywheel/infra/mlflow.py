"""A local MLflow tracking server (SQLite and local artifacts unless configured otherwise)."""

from __future__ import annotations

import sys

import httpx

from flywheel.infra.config import InfraConfig
from flywheel.infra.processes import (
    ComponentStatus,
    ensure_port_free,
    ensure_running,
    running_pid,
    spawn,
)

NAME = "mlflow"


def backend_store_uri(config: InfraConfig) -> str:
    """Return the backend store: the configured URI, else SQLite in run_dir/mlflow."""
    default = f"sqlite:///{config.run_dir / 'mlflow' / 'mlflow.db'}"
    return config.mlflow_backend_store_uri or default


def artifacts_destination(config: InfraConfig) -> str:
    """Return where artifacts go: the configured URI, else run_dir/mlflow/artifacts."""
    return config.mlflow_artifacts_destination or str(config.run_dir / "mlflow" / "artifacts")


def mlflow_answers(uri: str) -> bool:
    """Tell whether an MLflow server answers GET /health with 200."""
    try:
        return httpx.get(f"{uri.rstrip('/')}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def server_command(config: InfraConfig) -> list[str]:
    """Return the command that runs this venv's MLflow tracking server."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri(config),
        "--artifacts-destination", artifacts_destination(config),
        "--host", "127.0.0.1", "--port", str(config.mlflow_port), "--workers", "1",
    ]  # fmt: skip


def preflight_mlflow(config: InfraConfig) -> None:
    """Raise PortTakenError if our tracking server is not running and its port is held."""
    if running_pid(config.run_dir, NAME) is None:
        ensure_port_free(config.mlflow_port, "FLYWHEEL_MLFLOW_PORT")


def _launch(config: InfraConfig) -> int:
    """Check the port and spawn the tracking server."""
    preflight_mlflow(config)
    (config.run_dir / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
    return spawn(NAME, server_command(config), config.run_dir)


def start_mlflow(config: InfraConfig, timeout: float = 90.0) -> str:
    """Start the tracking server unless ours already runs; wait for /health; return its URI."""
    ensure_running(
        NAME,
        config.run_dir,
        lambda: _launch(config),
        lambda: mlflow_answers(config.mlflow_uri),
        f"MLflow on {config.mlflow_uri}",
        timeout,
    )
    return config.mlflow_uri


def mlflow_status(config: InfraConfig) -> ComponentStatus:
    """Report whether our tracking server runs."""
    pid = running_pid(config.run_dir, NAME)
    return ComponentStatus(NAME, "running" if pid else "stopped", pid, config.mlflow_uri)
