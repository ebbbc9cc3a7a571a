"""How many copies of each service the local stack runs, and where each one listens.

Replica 1 of a service keeps the service's own name (``router``: its pid file, log and
port are what a single-replica stack always had); replica ``k`` > 1 is ``router-k`` and
listens ``REPLICA_PORT_STRIDE * (k - 1)`` above the service's port. The defaults' ports
differ in their last digit (8000-8004), so replicas of different services never collide.
Every replica runs the same service with the same settings, so it joins the same Kafka
consumer group, and Kafka splits the topics' partitions among them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flywheel.infra.processes import pid_path
from shared.settings import SERVICE_PORTS

#: Port distance between consecutive replicas of one service (gateway 8000, 8010, 8020…).
REPLICA_PORT_STRIDE = 10

_REPLICA_NAME = re.compile(r"(?P<service>[a-z]+)-(?P<index>[2-9]|[1-9]\d+)")


@dataclass(frozen=True)
class Replica:
    """One process of a service: which copy it is and the port its HTTP server binds."""

    service: str
    index: int
    """1-based: replica 1 is the service's first (and, by default, only) process."""
    port: int

    @property
    def name(self) -> str:
        """The component name of its pid file, log file and status row."""
        return replica_name(self.service, self.index)

    @property
    def port_setting(self) -> str:
        """The setting that moves its port, for an error about a taken one."""
        setting = f"{self.service.upper()}_PORT"
        if self.index == 1:
            return setting
        return f"{setting} (replica {self.index} listens at it + {replica_port(0, self.index)})"


def replica_name(service: str, index: int) -> str:
    """``router`` for replica 1, ``router-3`` for replica 3."""
    return service if index == 1 else f"{service}-{index}"


def replica_port(base_port: int, index: int) -> int:
    """The port of replica ``index`` (1-based) of a service whose first replica has ``base_port``.

    >>> replica_port(8001, 1), replica_port(8001, 3)
    (8001, 8021)
    """
    return base_port + REPLICA_PORT_STRIDE * (index - 1)


def replicas_of(service: str, count: int, base_port: int) -> list[Replica]:
    """The ``count`` replicas of one service, in order."""
    return [Replica(service, i, replica_port(base_port, i)) for i in range(1, count + 1)]


def parse_replicas(text: str, services: Iterable[str] = tuple(SERVICE_PORTS)) -> dict[str, int]:
    """Read ``--replicas``: ``3`` (every service), ``router=2,monitor=2``, or ``2,gateway=4``.

    Services the text does not name run one replica (or the bare number's count).
    Raises ValueError with a sentence a person can act on.

    >>> parse_replicas("2,gateway=3", ["gateway", "router"])
    {'gateway': 3, 'router': 2}
    """
    services = tuple(services)
    default, named = 1, {}
    for item in (part.strip() for part in text.split(",")):
        name, sep, value = item.rpartition("=")
        if sep and name.strip() not in services:
            raise ValueError(f"unknown service {name.strip()!r}; choose from {', '.join(services)}")
        count = _replica_count(value, item)
        if sep:
            named[name.strip()] = count
        else:
            default = count
    return {service: named.get(service, default) for service in services}


def _replica_count(value: str, item: str) -> int:
    """A positive whole number of replicas, or ValueError naming the offending item."""
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{item!r}: a replica count is a whole number ≥ 1 (N or service=N)")
    return count


def recorded_indexes(run_dir: Path, service: str) -> list[int]:
    """Replica 1 and every further replica with a pid file (running or crashed), sorted."""
    indexes = [1]
    for path in pid_path(run_dir, service).parent.glob(f"{service}-*.pid"):
        match = _REPLICA_NAME.fullmatch(path.stem)
        if match is not None and match["service"] == service:
            indexes.append(int(match["index"]))
    return sorted(indexes)


def recorded_replicas(run_dir: Path, service: str, base_port: int) -> list[Replica]:
    """The replicas of a service that ``flywheel status`` shows and ``flywheel down`` stops."""
    return [
        Replica(service, i, replica_port(base_port, i)) for i in recorded_indexes(run_dir, service)
    ]


def replica_counts(
    requested: Mapping[str, int] | None, run_dir: Path, names: Iterable[str]
) -> dict[str, int]:
    """The count each service should run: the requested one, else as many as are recorded
    (``flywheel up`` without ``--replicas`` keeps a scaled stack as it is)."""
    if requested is not None:
        return {name: requested.get(name, 1) for name in names}
    return {name: recorded_indexes(run_dir, name)[-1] for name in names}
