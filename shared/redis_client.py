"""The one way a process builds its Redis client: one server, or a Redis Cluster.

``REDIS_CLUSTER`` chooses (``BaseServiceSettings.redis_cluster``): ``true`` builds
redis-py's cluster client, which learns the slot map from the node ``REDIS_URL``
names and sends each command to the primary owning its key; ``false`` the plain
client; ``auto`` (the default) asks the server with ``INFO cluster`` once, when
the client is built. Services type against ``RedisClient`` and never ask which.

On a cluster, one command, one MULTI/EXEC and one script must keep their keys in
one hash slot. Every key of one model carries the ``{model}`` hash tag
(``shared.events.model_key``), so a step on one model's state is atomic on both.
Keys of no model (prediction records by request id, idempotency markers) are
used alone or in non-transactional pipelines, which the cluster client splits by
node; ``slot_groups`` splits a script over many such keys by slot.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, TypeAlias

import redis as sync_redis
from redis.asyncio import Redis, RedisCluster
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError
from redis.retry import Retry

from shared.settings import RedisClusterMode

log = logging.getLogger(__name__)

RedisClient: TypeAlias = Redis | RedisCluster
"""What services hold: the asyncio client of one server or of a cluster."""

SyncRedisClient: TypeAlias = sync_redis.Redis | SyncRedisCluster
"""The blocking client of one server or of a cluster (command-line tools)."""


def cluster_enabled(url: str, timeout_s: float = 2.0) -> bool | None:
    """Whether the server at ``url`` runs in cluster mode; None when it does not answer."""
    probe = sync_redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        info: dict[str, Any] = probe.info("cluster")
    except (RedisError, OSError):
        return None
    finally:
        probe.close()
    return bool(int(info.get("cluster_enabled", 0)))


def uses_cluster(url: str, mode: RedisClusterMode) -> bool:
    """Whether ``mode`` means the cluster client for the server at ``url``."""
    if mode != "auto":
        return mode == "true"
    found = cluster_enabled(url)
    if found is None:
        # A single server is the default deployment; a cluster that is down at start
        # should say so with REDIS_CLUSTER=true rather than be guessed.
        log.warning(
            "Redis did not answer INFO cluster; using the single-server client "
            "(set REDIS_CLUSTER=true for a Redis Cluster)",
            extra={"redis_url": _without_password(url)},
        )
    return bool(found)


def redis_client(url: str, mode: RedisClusterMode = "auto", **options: Any) -> RedisClient:
    """The asyncio client for ``url``: a cluster's or one server's, as ``mode`` says.

    ``options`` go to both constructors (timeouts, ``decode_responses``...).
    Nothing connects here except the one ``INFO cluster`` of ``auto``.
    """
    if uses_cluster(url, mode):
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)


def sync_redis_client(url: str, mode: RedisClusterMode = "auto", **options: Any) -> SyncRedisClient:
    """The blocking client for ``url``, chosen as ``redis_client`` chooses."""
    if uses_cluster(url, mode):
        return SyncRedisCluster.from_url(url, **options)
    return sync_redis.Redis.from_url(url, **options)


def slot_groups(redis: RedisClient, keys: Sequence[str]) -> list[list[int]]:
    """Positions of ``keys`` grouped by hash slot on a cluster; all in one group otherwise.

    For a script over many independent keys: one call per group keeps each call's
    keys in one slot (CROSSSLOT otherwise), and one server still gets a single call.

    >>> slot_groups(Redis(), ["a", "b"])
    [[0, 1]]
    """
    if not isinstance(redis, RedisCluster):
        return [list(range(len(keys)))] if keys else []
    groups: dict[int, list[int]] = defaultdict(list)
    for position, key in enumerate(keys):
        groups[key_slot(key.encode())].append(position)
    return list(groups.values())


async def move_key(redis: RedisClient, source: str, target: str, *, replace: bool) -> bool:
    """Move ``source`` to ``target`` (kept if it exists unless ``replace``); True if moved.

    RENAME when both keys share a slot (one server: always). Across a cluster's
    slots RENAME is refused, so the value goes by DUMP and RESTORE (expiry kept)
    and ``source`` is deleted: not atomic, which the one-time start-up migrations
    that use this accept (a move interrupted halfway is redone at the next start).
    """
    if not isinstance(redis, RedisCluster) or key_slot(source.encode()) == key_slot(
        target.encode()
    ):
        return await _rename(redis, source, target, replace=replace)
    dumped = await redis.dump(source)
    if dumped is None or (not replace and await redis.exists(target)):
        return False
    ttl_ms = await redis.pttl(source)
    await redis.restore(target, max(int(ttl_ms), 0), dumped, replace=replace)
    await redis.delete(source)
    return True


async def _rename(redis: RedisClient, source: str, target: str, *, replace: bool) -> bool:
    if not await redis.exists(source):
        return False
    if replace:
        return bool(await redis.rename(source, target))
    return bool(await redis.renamenx(source, target))


def _without_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{host}" if at and credentials else url
