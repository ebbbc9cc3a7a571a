"""Real infrastructure for integration and end-to-end tests: given, in Docker, or local."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.infra import Endpoints, InfraConfig, InfraError, start_infra, stop_infra
from shared.kafka_security import SECURITY_ENV

KAFKA_ENV, REDIS_ENV, MLFLOW_ENV = "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "MLFLOW_TRACKING_URI"


def _free_ports(count: int) -> list[int]:
    """Return distinct TCP ports nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _docker_answers() -> bool:
    """Tell whether a Docker engine answers (the client binary alone proves nothing)."""
    try:
        import docker

        return bool(docker.from_env().ping())
    except Exception:  # no client library, no socket, no permission: all mean "no Docker"
        return False


def _kafka_in_docker(stack: contextlib.ExitStack) -> str:
    """Start a KRaft Kafka container for the session; return its bootstrap address."""
    from testcontainers.community.kafka import KafkaContainer

    container = stack.enter_context(KafkaContainer().with_kraft())
    return str(container.get_bootstrap_server())


def _redis_in_docker(stack: contextlib.ExitStack) -> str:
    """Start a Redis container for the session; return its URL."""
    from testcontainers.community.redis import RedisContainer

    container = stack.enter_context(RedisContainer())
    host, port = container.get_container_host_ip(), container.get_exposed_port(container.port)
    return f"redis://{host}:{port}/0"


def _local_config(run_dir: Path) -> InfraConfig:
    """Return a local-infra config on free ports, so a developer's own stack is left alone."""
    kafka, controller, redis, mlflow = _free_ports(4)
    return InfraConfig(run_dir, kafka, controller, redis, mlflow)


def _from_docker(stack: contextlib.ExitStack, kafka: str, redis: str) -> tuple[str, str]:
    """Fill in Kafka and Redis endpoints not given, with containers when Docker answers."""
    if (kafka and redis) or not _docker_answers():
        return kafka, redis
    return kafka or _kafka_in_docker(stack), redis or _redis_in_docker(stack)


def _start_local(config: InfraConfig, components: list[str]) -> Endpoints:
    """Start the missing components as local processes, or fail the session loudly."""
    try:
        return start_infra(config, components=components)
    except InfraError as error:
        pytest.fail(f"Test infrastructure did not start: {error}\n{error.detail}", pytrace=False)


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """Kafka, Redis and MLflow for the session: from env vars, else Docker, else local processes."""
    config = _local_config(tmp_path_factory.mktemp("flywheel"))
    mlflow = os.environ.get(MLFLOW_ENV, "")
    with contextlib.ExitStack() as stack:
        stack.callback(stop_infra, config)
        kafka, redis = os.environ.get(KAFKA_ENV, ""), os.environ.get(REDIS_ENV, "")
        kafka, redis = _from_docker(stack, kafka, redis)
        missing = {"kafka": kafka, "redis": redis, "mlflow": mlflow}
        local = _start_local(config, [name for name, given in missing.items() if not given])
        yield Endpoints(
            kafka_bootstrap=kafka or config.kafka_bootstrap,
            redis_url=redis or config.redis_url,
            mlflow_uri=mlflow or config.mlflow_uri,
            run_dir=config.run_dir,
            # A local broker requires SASL/SCRAM; tests reach it as the operator.
            kafka_credentials=local.kafka_credentials,
        )


@pytest.fixture(scope="session")
def infra_env(infra: Endpoints) -> Iterator[Endpoints]:
    """Export the session's endpoints as KAFKA_*, REDIS_URL, MLFLOW_TRACKING_URI.

    Kafka's security settings are the operator's, so services built in the test
    process may use any topic and group.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in SECURITY_ENV:
            patch.delenv(name, raising=False)
        for name, value in infra.kafka.env().items():
            patch.setenv(name, value)
        patch.setenv(REDIS_ENV, infra.redis_url)
        patch.setenv(MLFLOW_ENV, infra.mlflow_uri)
        yield infra


LAYERS = ("unit", "service", "integration", "e2e")


def _layer_of(nodeid: str) -> str:
    """The test layer a node id belongs to (its folder under tests/), or "doctest"."""
    parts = nodeid.split("/")
    return parts[1] if parts[0] == "tests" and parts[1] in LAYERS else "doctest"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print passed/failed/skipped per layer, so it is plain that the real-infra layers ran."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            layer = counts.setdefault(_layer_of(report.nodeid), {})
            layer[outcome] = layer.get(outcome, 0) + 1
    terminalreporter.section("tests per layer")
    for name in (*LAYERS, "doctest"):
        outcomes = counts.get(name, {})
        line = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) or "none collected"
        terminalreporter.write_line(f"{name:<12} {line}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when an integration or end-to-end test was skipped: they must run in CI."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    real = [r.nodeid for r in skipped if _layer_of(r.nodeid) in ("integration", "e2e")]
    if real:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(f"integration/e2e tests skipped (not allowed): {real}", red=True)


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool (and prometheus) from Debian's prometheus package, installed when missing."""
    found = shutil.which("promtool")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "prometheus"], check=True, env=env)
    found = shutil.which("promtool")
    assert found, "promtool still missing after installing the prometheus package"
    return found
