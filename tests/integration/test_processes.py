"""A component's whole process group: a worker outliving its leader is still the component."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import free_port

from flywheel.infra import PortTakenError
from flywheel.infra.processes import (
    ensure_port_free,
    is_alive,
    kill,
    port_open,
    running_pid,
    spawn,
    stop,
)

pytestmark = pytest.mark.integration

# The leader forks a worker that holds the port, as `mlflow server` forks its uvicorn worker.
WORKER = """
import os, socket, sys, time
sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
open(sys.argv[2] + ".tmp", "w").write(str(os.getpid()))
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
time.sleep(600)
"""
LEADER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
time.sleep(600)
"""


def _wait_for(path: Path) -> int:
    for _ in range(200):
        if path.exists():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"the worker never wrote {path}")


@pytest.fixture
def orphaned_worker(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    """A component whose leader was killed while its worker holds a port.

    Yields (run directory, port, worker pid).
    """
    port, worker_pid_file = free_port(), tmp_path / "worker.pid"
    argv = [sys.executable, "-c", LEADER, WORKER, str(port), str(worker_pid_file)]
    leader = spawn("server", argv, tmp_path)
    worker = _wait_for(worker_pid_file)
    assert running_pid(tmp_path, "server") is not None  # positive control: all of it runs
    os.kill(leader, signal.SIGKILL)  # what a person does with the pid `flywheel status` shows
    while is_alive(leader):  # also reaps it: the leader is this test's child
        time.sleep(0.05)
    try:
        yield tmp_path, port, worker
    finally:
        if is_alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_group_whose_worker_lives_is_still_running(
    orphaned_worker: tuple[Path, int, int],
) -> None:
    run_dir, port, _ = orphaned_worker
    assert port_open(port)
    assert running_pid(run_dir, "server") is not None


def test_a_taken_port_names_the_process_holding_it(orphaned_worker: tuple[Path, int, int]) -> None:
    _, port, worker = orphaned_worker
    with pytest.raises(PortTakenError) as taken:
        ensure_port_free(port, "SERVER_PORT")
    assert f"pid {worker}" in str(taken.value)
    assert "python" in str(taken.value)
    assert "SERVER_PORT" in str(taken.value)


def test_stop_ends_the_whole_group(orphaned_worker: tuple[Path, int, int]) -> None:
    run_dir, port, worker = orphaned_worker
    assert stop(run_dir, "server", timeout=5)
    assert not is_alive(worker)
    assert not port_open(port)
    assert running_pid(run_dir, "server") is None


def test_kill_ends_the_whole_group_at_once(orphaned_worker: tuple[Path, int, int]) -> None:
    run_dir, _, worker = orphaned_worker
    assert kill(run_dir, "server")
    assert not is_alive(worker)
    assert running_pid(run_dir, "server") is None
    assert not kill(run_dir, "server")  # nothing runs any more
