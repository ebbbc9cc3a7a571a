"""The whole local stack: infrastructure (Kafka, Redis, MLflow) and the five services."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from flywheel.infra import kafka, mlflow, redis
from flywheel.infra.admin_token import ADMIN_TOKEN_ENV, ensure_admin_token, read_admin_token
from flywheel.infra.config import Endpoints, InfraConfig
from flywheel.infra.errors import StartupError
from flywheel.infra.processes import (
    ComponentStatus,
    ensure_port_free,
    is_alive,
    kill,
    log_path,
    port_bindable,
    port_open,
    running_pid,
    spawn,
    stop,
    stop_all,
    wait_until,
)
from shared.kafka_security import SECURITY_ENV
from shared.settings import SERVICE_PORTS

SERVICES: tuple[str, ...] = tuple(SERVICE_PORTS)
INFRA: tuple[str, ...] = (kafka.NAME, redis.NAME, mlflow.NAME)
_STARTERS: dict[str, Callable[[InfraConfig, float], str]] = {
    kafka.NAME: kafka.start_kafka,
    redis.NAME: redis.start_redis,
    mlflow.NAME: mlflow.start_mlflow,
}
_PREFLIGHTS: dict[str, Callable[[InfraConfig], None]] = {
    kafka.NAME: kafka.preflight_kafka,
    redis.NAME: redis.preflight_redis,
    mlflow.NAME: mlflow.preflight_mlflow,
}


def start_infra(
    config: InfraConfig, timeout: float = 90.0, components: Iterable[str] = INFRA
) -> Endpoints:
    """Start (or reuse) Kafka, Redis and MLflow side by side; return their endpoints."""
    components = list(components)
    for name in components:  # fail on a taken port before starting anything
        _PREFLIGHTS[name](config)
    starters = [_STARTERS[name] for name in components]
    with ThreadPoolExecutor(max_workers=max(len(starters), 1)) as pool:
        futures = [pool.submit(start, config, timeout) for start in starters]
        for future in futures:
            future.result()
    credentials = kafka.kafka_credentials(config) if kafka.NAME in components else None
    return config.endpoints(credentials)


def stop_infra(config: InfraConfig) -> list[str]:
    """Stop the infrastructure Flywheel started (MLflow, Redis, Kafka); return what ran."""
    return stop_all(config.run_dir, reversed(INFRA), timeout=30.0)


def infra_status(config: InfraConfig) -> list[ComponentStatus]:
    """Report each infrastructure component's state."""
    return [kafka.kafka_status(config), redis.redis_status(config), mlflow.mlflow_status(config)]


def service_ports_from_env(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Return each service's port: ``<NAME>_PORT`` when set, else the shared default."""
    env = os.environ if env is None else env
    return {name: int(env.get(f"{name.upper()}_PORT", p)) for name, p in SERVICE_PORTS.items()}


def service_env(name: str, endpoints: Endpoints, port: int) -> dict[str, str]:
    """Return the environment a service process runs with: it reaches Kafka as itself."""
    inherited = {k: v for k, v in os.environ.items() if k not in SECURITY_ENV}
    return {
        **inherited,
        **endpoints.kafka_for(name).env(),
        "REDIS_URL": endpoints.redis_url,
        "MLFLOW_TRACKING_URI": endpoints.mlflow_uri,
        "FLYWHEEL_DATA_DIR": str(endpoints.run_dir / "data"),
        f"{name.upper()}_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        **_admin_env(name, endpoints.run_dir),
    }


#: Services with admin routes; each is started with the stack's admin token.
ADMIN_SERVICES: tuple[str, ...] = ("registry",)


def _admin_env(name: str, run_dir: Path) -> dict[str, str]:
    """The admin token for a service with admin routes: the operator's if set, else generated."""
    if name not in ADMIN_SERVICES:
        return {}
    return {ADMIN_TOKEN_ENV: read_admin_token(run_dir) or ensure_admin_token(run_dir)}


def service_url(port: int) -> str:
    """Return a local service's base URL."""
    return f"http://127.0.0.1:{port}"


def service_ready(port: int) -> bool:
    """Tell whether a service answers GET /readyz with 200."""
    try:
        return httpx.get(f"{service_url(port)}/readyz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _spawn_service(name: str, endpoints: Endpoints, port: int) -> int:
    """Spawn a service unless ours already runs; return its pid."""
    pid = running_pid(endpoints.run_dir, name)
    if pid is not None:
        return pid
    ensure_port_free(port, f"{name.upper()}_PORT")
    (endpoints.run_dir / "data").mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "flywheel", "service", name]
    return spawn(name, argv, endpoints.run_dir, service_env(name, endpoints, port))


def _wait_service(name: str, pid: int, port: int, run_dir: Path, timeout: float) -> None:
    """Wait until a service is ready, else stop it; the error carries the tail of its log."""
    try:
        wait_until(
            lambda: service_ready(port),
            timeout,
            f"the {name} service on {service_url(port)}/readyz",
            alive=lambda: is_alive(pid),
            log=log_path(run_dir, name),
        )
    except StartupError:
        stop(run_dir, name)
        raise


def start_services(
    endpoints: Endpoints,
    ports: Mapping[str, int] | None = None,
    names: Iterable[str] = SERVICES,
    timeout: float = 120.0,
) -> dict[str, str]:
    """Start (or reuse) the services side by side, wait for /readyz; return name -> URL."""
    ports = {**SERVICE_PORTS, **(ports or {})}
    pids = {name: _spawn_service(name, endpoints, ports[name]) for name in names}
    for name, pid in pids.items():
        _wait_service(name, pid, ports[name], endpoints.run_dir, timeout)
    return {name: service_url(ports[name]) for name in pids}


def stop_services(run_dir: Path, names: Iterable[str] = SERVICES) -> list[str]:
    """Stop the services Flywheel started; return those that ran."""
    return stop_all(run_dir, reversed(list(names)))


def crash_service(run_dir: Path, name: str, port: int, timeout: float = 30.0) -> bool:
    """SIGKILL one service's process group (the fault tests' crash); return whether it ran.

    Returns once its port is free: a killed process's leader is a zombie before its
    other threads have exited and closed the listening socket.
    ``start_services(endpoints, ports, names=[name])`` brings it back.
    """
    ran = kill(run_dir, name)
    wait_until(
        lambda: port_bindable(port) and not port_open(port),
        timeout,
        f"port {port} of the killed {name} service to be released",
    )
    return ran


def services_status(run_dir: Path, ports: Mapping[str, int] | None = None) -> list[ComponentStatus]:
    """Report each service's state."""
    ports = {**SERVICE_PORTS, **(ports or {})}
    statuses = []
    for name in SERVICES:
        pid = running_pid(run_dir, name)
        state = "running" if pid is not None else "stopped"
        statuses.append(ComponentStatus(name, state, pid, service_url(ports[name])))
    return statuses
