"""What Linux's /proc says about processes: their group, start time, and who holds a port.

Every function answers "unknown" (None, an empty list) where /proc is missing or
unreadable, so callers fall back to what the pid alone tells them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_LISTEN = "0A"  # TCP state of a listening socket in /proc/net/tcp


@dataclass(frozen=True)
class ProcessStat:
    """The fields of /proc/<pid>/stat that process tracking needs."""

    state: str
    """One letter: R running, S sleeping, Z zombie (exited, not yet reaped)…"""
    pgid: int
    """The process group: a component's leader and every process it forked."""
    start_ticks: int
    """Start time after boot in clock ticks: a reused pid starts later."""


def process_stat(pid: int, proc: Path = PROC) -> ProcessStat | None:
    """Read one process's state, group and start time; None when it does not exist."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields after its last ")" do not.
    fields = stat.rsplit(")", 1)[1].split()
    return ProcessStat(state=fields[0], pgid=int(fields[2]), start_ticks=int(fields[19]))


def _pids(proc: Path) -> Iterator[int]:
    try:
        names = os.listdir(proc)
    except OSError:
        return
    yield from (int(name) for name in names if name.isdigit())


def group_members(pgid: int, started_ticks: int, proc: Path = PROC) -> list[int]:
    """Live processes of group ``pgid`` that started no earlier than its leader did.

    Zombies are left out (they hold nothing); so are processes of a later group that
    reused the id, which started after the whole first group had gone.
    """
    members = []
    for pid in _pids(proc):
        stat = process_stat(pid, proc)
        if stat and stat.pgid == pgid and stat.state != "Z" and stat.start_ticks >= started_ticks:
            members.append(pid)
    return sorted(members)


def command_line(pid: int, proc: Path = PROC, limit: int = 100) -> str:
    """A process's command line on one line, cut at ``limit`` characters ("" if unknown)."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    text = " ".join(raw.decode(errors="replace").replace("\0", " ").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def listening_inodes(port: int, proc: Path = PROC) -> set[str]:
    """Socket inodes listening on TCP ``port`` (IPv4 or IPv6, any address)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def _holds_socket(pid: int, sockets: set[str], proc: Path) -> bool:
    fd_dir = proc / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:  # another user's process, or gone meanwhile
        return False
    for fd in fds:
        try:
            if os.readlink(fd_dir / fd) in sockets:
                return True
        except OSError:
            continue
    return False


def port_holders(port: int, proc: Path = PROC) -> list[int]:
    """Pids of the processes whose open sockets listen on TCP ``port`` (those we may see)."""
    sockets = {f"socket:[{inode}]" for inode in listening_inodes(port, proc)}
    if not sockets:
        return []
    return [pid for pid in _pids(proc) if _holds_socket(pid, sockets, proc)]
