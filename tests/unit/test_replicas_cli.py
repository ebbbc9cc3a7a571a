"""``flywheel up --replicas``: counts per service, replica names and ports, status and down.

The process tests start small stand-ins (a sleeping process, a tiny HTTP server answering
``/readyz``) under a temporary run directory, so they check the real pid files, the real
stop and the real readiness wait without Kafka, Redis or MLflow.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flywheel import cli
from flywheel.infra.config import Endpoints, InfraConfig
from flywheel.infra.processes import running_pid, spawn
from flywheel.infra.replicas import (
    REPLICA_PORT_STRIDE,
    Replica,
    parse_replicas,
    recorded_indexes,
    replicas_of,
)
from flywheel.infra.stack import SERVICES, services_status, start_services, stop_services
from shared.settings import SERVICE_PORTS

# A stand-in service: answers every GET with 200 on the port it is given.
READY_SERVER = (
    "import http.server, sys\n"
    "class Ready(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), Ready).serve_forever()\n"
)


# --- parsing and planning ------------------------------------------------------------------------


def test_a_bare_number_scales_every_service() -> None:
    assert parse_replicas("3") == dict.fromkeys(SERVICES, 3)


def test_named_services_scale_and_the_others_keep_one() -> None:
    counts = parse_replicas("router=2, monitor=4")
    assert counts == {"gateway": 1, "router": 2, "registry": 1, "trainer": 1, "monitor": 4}


def test_a_bare_number_is_the_default_for_the_unnamed_services() -> None:
    counts = parse_replicas("2,gateway=5")
    assert counts == {"gateway": 5, "router": 2, "registry": 2, "trainer": 2, "monitor": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [("0", "≥ 1"), ("router=-1", "≥ 1"), ("two", "whole number"), ("scheduler=2", "unknown")],
)
def test_invalid_counts_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_replicas(text)


def test_replicas_of_a_service_get_distinct_ports_that_do_not_meet_other_services() -> None:
    plan = [r for name in SERVICES for r in replicas_of(name, 4, SERVICE_PORTS[name])]
    assert len({r.port for r in plan}) == len(plan) == 20
    router = replicas_of("router", 3, 8001)
    assert [(r.name, r.port) for r in router] == [
        ("router", 8001),
        ("router-2", 8001 + REPLICA_PORT_STRIDE),
        ("router-3", 8001 + 2 * REPLICA_PORT_STRIDE),
    ]


def test_a_taken_replica_port_names_the_setting_that_moves_it() -> None:
    assert Replica("router", 1, 8001).port_setting == "ROUTER_PORT"
    assert "ROUTER_PORT" in Replica("router", 3, 8021).port_setting
    assert "+ 20" in Replica("router", 3, 8021).port_setting


# --- the command line --------------------------------------------------------------------------


class FakeStack:
    """Stands in for the infrastructure and the services: records what ``up`` asked for."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.requested: list[Mapping[str, int] | None] = []

    def start_infra(self, config: InfraConfig) -> Endpoints:
        return Endpoints("127.0.0.1:9092", "redis://127.0.0.1:6379/0", "http://m", self.run_dir)

    def start_services(
        self,
        endpoints: Endpoints,
        ports: Mapping[str, int],
        replicas: Mapping[str, int] | None = None,
    ) -> dict[str, str]:
        self.requested.append(replicas)
        counts = replicas or dict.fromkeys(SERVICES, 1)
        plan = [r for n in SERVICES for r in replicas_of(n, counts[n], ports[n])]
        return {r.name: f"http://127.0.0.1:{r.port}" for r in plan}


@pytest.fixture
def fake_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeStack:
    stack = FakeStack(tmp_path)
    monkeypatch.setenv("FLYWHEEL_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("FLYWHEEL_REPLICAS", raising=False)
    for name in SERVICES:
        monkeypatch.delenv(f"{name.upper()}_PORT", raising=False)
    monkeypatch.setattr(cli, "start_infra", stack.start_infra)
    monkeypatch.setattr(cli, "start_services", stack.start_services)
    return stack


def test_up_passes_the_counts_and_prints_every_replica_url(fake_stack: FakeStack) -> None:
    result = CliRunner().invoke(cli.app, ["up", "--replicas", "router=2,gateway=3"])
    assert result.exit_code == 0, result.output
    assert fake_stack.requested == [{**dict.fromkeys(SERVICES, 1), "router": 2, "gateway": 3}]
    rows = {tuple(line.split()) for line in result.output.splitlines()}
    for name, port in [("gateway-3", 8020), ("router-2", 8011), ("monitor", 8004)]:
        assert (name, f"http://127.0.0.1:{port}") in rows
    assert "router-3" not in result.output


def test_up_reads_the_count_from_the_environment(
    fake_stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_REPLICAS", "2")
    assert CliRunner().invoke(cli.app, ["up"]).exit_code == 0
    assert fake_stack.requested == [dict.fromkeys(SERVICES, 2)]


def test_up_without_replicas_keeps_what_runs(fake_stack: FakeStack) -> None:
    assert CliRunner().invoke(cli.app, ["up"]).exit_code == 0
    assert fake_stack.requested == [None]


def test_a_bad_count_starts_nothing(fake_stack: FakeStack) -> None:
    result = CliRunner().invoke(cli.app, ["up", "--replicas", "router=0"])
    assert result.exit_code == 2
    assert "--replicas" in result.output
    assert fake_stack.requested == []


# --- real processes: status, scale down, down ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    stop_services(tmp_path)  # nothing a failed test started outlives it


def _spawn_ready(run_dir: Path, name: str, port: int) -> int:
    return spawn(name, [sys.executable, "-c", READY_SERVER, str(port)], run_dir)


def _spawn_idle(run_dir: Path, name: str) -> int:
    return spawn(name, [sys.executable, "-c", "import time; time.sleep(120)"], run_dir)


def test_status_lists_each_running_replica_at_its_port(run_dir: Path) -> None:
    _spawn_idle(run_dir, "router")
    _spawn_idle(run_dir, "router-2")
    rows = {s.name: s for s in services_status(run_dir, {"router": 9001})}
    assert rows["router"].state == rows["router-2"].state == "running"
    assert rows["router-2"].address == f"http://127.0.0.1:{9001 + REPLICA_PORT_STRIDE}"
    assert rows["gateway"].state == "stopped"
    assert "router-3" not in rows
    assert "gateway-2" not in rows


def test_down_stops_every_replica(run_dir: Path) -> None:
    for name in ("monitor", "monitor-2", "monitor-3", "gateway-2"):
        _spawn_idle(run_dir, name)
    stopped = stop_services(run_dir)
    assert sorted(stopped) == ["gateway-2", "monitor", "monitor-2", "monitor-3"]
    assert all(running_pid(run_dir, name) is None for name in stopped)
    assert recorded_indexes(run_dir, "monitor") == [1]


def test_fewer_replicas_stop_the_surplus_and_keep_the_rest(run_dir: Path) -> None:
    port = _free_port()
    first = _spawn_ready(run_dir, "trainer", port)
    _spawn_idle(run_dir, "trainer-2")
    _spawn_idle(run_dir, "trainer-3")
    endpoints = Endpoints("127.0.0.1:1", "redis://127.0.0.1:1/0", "http://127.0.0.1:1", run_dir)
    urls = start_services(
        endpoints, {"trainer": port}, names=["trainer"], timeout=20, replicas={"trainer": 1}
    )
    assert urls == {"trainer": f"http://127.0.0.1:{port}"}
    assert running_pid(run_dir, "trainer") == first  # reused, not restarted
    assert running_pid(run_dir, "trainer-2") is None
    assert running_pid(run_dir, "trainer-3") is None


def test_without_a_count_the_running_replicas_are_kept(run_dir: Path) -> None:
    base = _free_port()
    _spawn_ready(run_dir, "trainer", base)
    _spawn_ready(run_dir, "trainer-2", base + REPLICA_PORT_STRIDE)
    endpoints = Endpoints("127.0.0.1:1", "redis://127.0.0.1:1/0", "http://127.0.0.1:1", run_dir)
    urls = start_services(endpoints, {"trainer": base}, names=["trainer"], timeout=20)
    assert urls == {
        "trainer": f"http://127.0.0.1:{base}",
        "trainer-2": f"http://127.0.0.1:{base + REPLICA_PORT_STRIDE}",
    }
    assert running_pid(run_dir, "trainer-2") is not None
