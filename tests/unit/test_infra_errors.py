"""Local infrastructure fails with one sentence naming the problem and the fix."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flywheel.infra import (
    InfraConfig,
    MissingToolError,
    PortTakenError,
    start_kafka,
    start_mlflow,
    start_redis,
)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port held by a listening socket of this test (a foreign process to Flywheel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("field", "start", "env_var"),
    [
        ("kafka_port", start_kafka, "FLYWHEEL_KAFKA_PORT"),
        ("kafka_controller_port", start_kafka, "FLYWHEEL_KAFKA_CONTROLLER_PORT"),
        ("redis_port", start_redis, "FLYWHEEL_REDIS_PORT"),
        ("mlflow_port", start_mlflow, "FLYWHEEL_MLFLOW_PORT"),
    ],
)
def test_taken_port_is_named_with_the_variable_that_moves_it(
    tmp_path: Path,
    taken_port: int,
    field: str,
    start: Callable[[InfraConfig, float], str],
    env_var: str,
) -> None:
    free = InfraConfig(tmp_path, kafka_port=_free_port(), kafka_controller_port=_free_port())
    changes: dict[str, Any] = {field: taken_port}
    config = dataclasses.replace(free, **changes)
    with pytest.raises(PortTakenError) as error:
        start(config, 5.0)
    # The holder is this very test process, named by pid and command line.
    assert str(error.value).startswith(f"Port {taken_port} is taken by pid {os.getpid()} (")
    assert str(error.value).endswith(f"); stop it or set {env_var}.")
    assert not (tmp_path / "pids").exists()


def test_missing_java_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    config = InfraConfig(
        run_dir=tmp_path, kafka_port=_free_port(), kafka_controller_port=_free_port()
    )
    with pytest.raises(MissingToolError, match=r"^`java` is not on PATH; install a Java 17\+"):
        start_kafka(config, 5.0)


def test_config_reads_ports_and_mlflow_stores_from_env(tmp_path: Path) -> None:
    config = InfraConfig.from_env(
        {
            "FLYWHEEL_RUN_DIR": str(tmp_path),
            "FLYWHEEL_KAFKA_PORT": "19999",
            "FLYWHEEL_MLFLOW_BACKEND_STORE_URI": "postgresql://db/mlflow",
            "FLYWHEEL_MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/mlflow",
        }
    )
    assert config.kafka_bootstrap == "127.0.0.1:19999"
    assert config.run_dir == tmp_path.resolve()
    assert config.mlflow_backend_store_uri == "postgresql://db/mlflow"
    assert config.mlflow_artifacts_destination == "s3://bucket/mlflow"


def test_cluster_ids_never_start_with_a_dash_the_storage_tool_would_read_as_an_option() -> None:
    from flywheel.infra.kafka import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]  # ~1 in 64 raw ids starts with "-"
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
