"""Detached process groups tracked by pid files, port checks and readiness waits.

Each component runs in its own session, so its leader and every worker it forks share
one process group; the component runs while any of them does, and stopping it signals
the whole group.
"""

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
from flywheel.infra.procfs import command_line, group_members, port_holders, process_stat


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
    stat = process_stat(pid)
    return "" if stat is None else str(stat.start_ticks)


def is_alive(pid: int) -> bool:
    """Tell whether a process runs (reaping it first if it is our exited child; zombies do not)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = process_stat(pid)
    return stat is None or stat.state != "Z"


@dataclass(frozen=True)
class _Group:
    """A component's process group as its pid file records it."""

    pgid: int
    """The leader's pid, which is also the group's id (spawn starts a new session)."""
    started: str
    """The leader's start time in clock ticks; "" where /proc is missing."""


def _recorded(run_dir: Path, name: str) -> _Group | None:
    try:
        pid_text, *rest = pid_path(run_dir, name).read_text().split()
        return _Group(int(pid_text), "".join(rest[:1]))
    except (OSError, ValueError):
        return None


def _group_alive(group: _Group) -> bool:
    if is_alive(group.pgid) and _start_time(group.pgid) == group.started:
        return True
    # A leader killed by hand can leave a worker serving, and holding the port, on its own.
    return bool(group.started) and bool(group_members(group.pgid, int(group.started)))


def running_pid(run_dir: Path, name: str) -> int | None:
    """Return the recorded process group (its leader's pid) while any process of it runs."""
    group = _recorded(run_dir, name)
    return group.pgid if group is not None and _group_alive(group) else None


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


def _wait_exit(groups: Iterable[_Group], timeout: float) -> bool:
    """Wait until every process of the groups has exited; return whether they did in time."""
    groups, deadline = list(groups), time.monotonic() + timeout
    while any(_group_alive(group) for group in groups):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop_all(run_dir: Path, names: Iterable[str], timeout: float = 15.0) -> list[str]:
    """Stop components' whole process groups together (SIGTERM, wait, SIGKILL).

    Returns the components that ran.
    """
    names = list(names)
    recorded = {name: _recorded(run_dir, name) for name in names}
    groups = {name: g for name, g in recorded.items() if g is not None and _group_alive(g)}
    for group in groups.values():
        _signal_group(group.pgid, signal.SIGTERM)
    if not _wait_exit(groups.values(), timeout):
        for group in groups.values():
            _signal_group(group.pgid, signal.SIGKILL)
        if not _wait_exit(groups.values(), 10.0):
            raise StartupError(f"Processes {sorted(groups)} survived SIGKILL; stop them by hand.")
    for name in names:
        pid_path(run_dir, name).unlink(missing_ok=True)
    return list(groups)


def stop(run_dir: Path, name: str, timeout: float = 15.0) -> bool:
    """Stop one component by its pid file; return whether it ran."""
    return bool(stop_all(run_dir, [name], timeout))


def kill(run_dir: Path, name: str, timeout: float = 10.0) -> bool:
    """SIGKILL one component's whole process group, as a crash would; return whether it ran.

    No shutdown hook runs. The pid file stays, as after a real crash: the next
    start finds the group dead and replaces it.
    """
    group = _recorded(run_dir, name)
    if group is None or not _group_alive(group):
        return False
    _signal_group(group.pgid, signal.SIGKILL)
    if not _wait_exit([group], timeout):
        raise StartupError(f"{name} (group {group.pgid}) survived SIGKILL; stop it by hand.")
    return True


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
    """Raise PortTakenError, naming the process that holds the port, when it is in use."""
    if not port_bindable(port) or port_open(port):
        holder = port_holder(port)
        raise PortTakenError(f"Port {port} is taken by {holder}; stop it or set {env_var}.")


def port_holder(port: int) -> str:
    """Name the process listening on a port: "pid N (command line)", or "another process"."""
    pids = port_holders(port)
    if not pids:  # another user's process, or no /proc: nothing more to say
        return "another process"
    return ", ".join(f"pid {pid} ({command_line(pid) or '?'})" for pid in pids[:3])


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
    if running_pid(run_dir, name) is None:
        launch()

    def alive() -> bool:  # the group, not the leader: a worker may outlive it and still serve
        return running_pid(run_dir, name) is not None

    wait_until(answers, timeout, what, alive=alive, log=log_path(run_dir, name))
