"""Detached processes tracked by pid files, port checks and readiness waits."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flywheel.infra.errors import MissingToolError, PortTakenError, StartupError


@dataclass(frozen=True)
class ComponentStatus:
    """State of one component for ``flywheel status``."""

    name: str
    state: str
    pid: int | None
    address: str


def pid_path(run_dir: Path, name: str) -> Path:
    """Return the pid file of a component."""
    return run_dir / "pids" / f"{name}.pid"


def log_path(run_dir: Path, name: str) -> Path:
    """Return the log file of a component."""
    return run_dir / "logs" / f"{name}.log"


def _start_time(pid: int) -> str:
    """Return a process's start time from /proc, or "" where /proc is missing (guards pid reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def is_alive(pid: int) -> bool:
    """Tell whether a process runs (reaping it first if it is our exited child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_pid(run_dir: Path, name: str) -> int | None:
    """Return the pid recorded for a component if that very process still runs."""
    try:
        pid_text, *rest = pid_path(run_dir, name).read_text().split()
        pid, started = int(pid_text), "".join(rest[:1])
    except (OSError, ValueError):
        return None
    if not is_alive(pid) or _start_time(pid) != started:
        return None
    return pid


def spawn(
    name: str, argv: Sequence[str], run_dir: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start a detached process logging to run_dir/logs/<name>.log; record its pid."""
    log = log_path(run_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_path(run_dir, name).parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    pid_path(run_dir, name).write_text(f"{process.pid} {_start_time(process.pid)}\n")
    return process.pid


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group a detached process leads (its workers included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _wait_exit(pids: list[int], timeout: float) -> bool:
    """Wait until all processes have exited; return whether they did in time."""
    deadline = time.monotonic() + timeout
    while any(is_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop_all(run_dir: Path, names: Iterable[str], timeout: float = 15.0) -> list[str]:
    """Stop components by pid file together (SIGTERM, wait, SIGKILL); return those that ran."""
    names = list(names)
    pids = {name: pid for name in names if (pid := running_pid(run_dir, name)) is not None}
    for pid in pids.values():
        _signal_group(pid, signal.SIGTERM)
    if not _wait_exit(list(pids.values()), timeout):
        for pid in pids.values():
            _signal_group(pid, signal.SIGKILL)
        if not _wait_exit(list(pids.values()), 10.0):
            raise StartupError(f"Processes {sorted(pids)} survived SIGKILL; stop them by hand.")
    for name in names:
        pid_path(run_dir, name).unlink(missing_ok=True)
    return list(pids)


def stop(run_dir: Path, name: str, timeout: float = 15.0) -> bool:
    """Stop one component by its pid file; return whether it ran."""
    return bool(stop_all(run_dir, [name], timeout))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether something accepts TCP connections on a port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether a listener could bind the port now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def ensure_port_free(port: int, env_var: str) -> None:
    """Raise PortTakenError when a port is already in use."""
    if not port_bindable(port) or port_open(port):
        raise PortTakenError(f"Port {port} is taken by another process; stop it or set {env_var}.")


def require_tool(tool: str, fix: str) -> str:
    """Return a program's path, or raise MissingToolError saying how to install it."""
    path = shutil.which(tool)
    if path is None:
        raise MissingToolError(f"`{tool}` is not on PATH; {fix}.")
    return path


def tail(path: Path, lines: int = 20) -> str:
    """Return the last lines of a text file ("" if it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    alive: Callable[[], bool] = lambda: True,
    log: Path | None = None,
) -> None:
    """Poll until ready() holds; raise StartupError on timeout or when the process exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            problem = "the process exited while starting"
        elif time.monotonic() > deadline:
            problem = f"it was not ready after {timeout:.0f} s"
        else:
            time.sleep(0.5)
            continue
        where = f"; see {log}" if log is not None else ""
        detail = tail(log) if log is not None else ""
        raise StartupError(f"Waiting for {what} failed: {problem}{where}.", detail)


def ensure_running(
    name: str,
    run_dir: Path,
    launch: Callable[[], int],
    answers: Callable[[], bool],
    what: str,
    timeout: float,
) -> None:
    """Reuse our running process ``name`` or launch it; wait until it answers."""
    pid = running_pid(run_dir, name) or launch()
    wait_until(answers, timeout, what, alive=lambda: is_alive(pid), log=log_path(run_dir, name))
