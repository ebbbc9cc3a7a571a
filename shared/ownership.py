"""State follows partition ownership: which models a replica owns, and writes fenced by epoch.

Every event is keyed by its model (``shared.messaging.publisher.message_key``), so
one model's events live in one partition of each topic: partition
``model_partition(model, n)``, the producer's own murmur2 choice. The replica
assigned that partition of a service's subscription owns the model's state:

- ``PartitionOwnership`` follows one subscription's assigned partitions (a rebalance
  listener feeds it) and answers "do I own model M"; hooks run on release (flush)
  and on acquisition (check or load).
- ``co_partitioned_assignor`` makes a consumer group give partition ``p`` of every
  topic to one replica (all its consumers), so a model's predictions and its
  feedback are handled where its state is. Topics must have equal partition counts.
- ``RedisFencing`` fences writes: a replica takes an epoch of a model (INCR of a
  key in the model's ``{model}`` hash slot) before it reads the model's state, and
  every write runs in a Lua script that applies it only while the stored epoch is
  still the one taken. A paused or partitioned zombie then cannot overwrite its
  successor's state: its write raises ``FencedOffError`` and nothing of it is kept.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import DependencyUnavailableError, FencedOffError, FlywheelError
from shared.events import model_key
from shared.messaging.publisher import partition_of

log = logging.getLogger(__name__)

#: Called with the partition numbers a replica just acquired or released.
PartitionHook = Callable[[frozenset[int]], Awaitable[None]]


def model_partition(model_name: str, partitions: int) -> int:
    """The partition of ``model_name``'s events on a topic of ``partitions`` partitions.

    The same murmur2 choice the producer makes for the model's key.

    >>> model_partition("churn", 6)
    5
    """
    chosen = partition_of(model_name.encode(), list(range(partitions)))
    if chosen is None:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return chosen


class PartitionOwnership:
    """Which partitions of one subscription's topic this replica owns, and so which models.

    Before its first assignment (an in-memory test broker assigns nothing) and when
    the partition count is unknown (the group fell back to another assignor), every
    model counts as owned: the epochs alone then guard the state. A model whose
    write was fenced off is not owned again before the next assignment.
    """

    def __init__(
        self,
        topic: str,
        partition_count: Callable[[str], int | None],
        co_partitioned: Sequence[str] = (),
    ) -> None:
        self.topic = topic
        self._partition_count = partition_count
        #: Topics whose events also act on the owned state: their partition p must be ours too.
        self._co_partitioned = tuple(co_partitioned)
        self._owned: frozenset[int] | None = None
        self._count: int | None = None
        self._lost: set[str] = set()
        self._on_acquired: list[PartitionHook] = []
        self._on_released: list[PartitionHook] = []

    def on_acquired(self, hook: PartitionHook) -> None:
        """Run ``hook`` with the partitions each assignment gives this replica."""
        self._on_acquired.append(hook)

    def on_released(self, hook: PartitionHook) -> None:
        """Run ``hook`` with the partitions each revocation takes away, before others get them."""
        self._on_released.append(hook)

    def partition(self, model_name: str) -> int | None:
        """The partition of ``model_name`` (None while the partition count is unknown)."""
        return None if self._count is None else model_partition(model_name, self._count)

    def owns(self, model_name: str) -> bool:
        """Whether this replica owns ``model_name``'s state now."""
        if model_name in self._lost:
            return False
        partition = self.partition(model_name)
        return self._owned is None or partition is None or partition in self._owned

    def lose(self, model_name: str) -> None:
        """Another replica took ``model_name`` over: not ours until the next assignment."""
        self._lost.add(model_name)

    async def assigned(self, partitions: Iterable[int]) -> None:
        """The group assigned ``partitions`` of the topic (the whole assignment)."""
        self._count = self._consistent_count()
        self._owned = frozenset(partitions)
        self._lost.clear()
        await _run(self._on_acquired, self._owned, "acquired")

    def _consistent_count(self) -> int | None:
        """The topic's partition count, or None when a co-partitioned topic's differs.

        With unequal counts a model's events of another topic may reach a replica
        that does not own it; refusing them there would stall that topic, so every
        model counts as owned and the epochs alone guard, loudly.
        """
        count = self._partition_count(self.topic)
        others = {t: self._partition_count(t) for t in self._co_partitioned}
        unequal = {t: n for t, n in others.items() if n is not None and n != count}
        if count is not None and unequal:
            log.error(
                "co-partitioned topics have unequal partition counts; ownership off",
                extra={"topic": self.topic, "partitions": count, "others": unequal},
            )
            return None
        return count

    async def revoked(self, partitions: Iterable[int]) -> None:
        """The group is taking ``partitions`` away: release them before anyone else reads."""
        released = frozenset(partitions)
        await _run(self._on_released, released, "released")
        self._owned = (self._owned or frozenset()) - released

    def listener(self) -> ConsumerRebalanceListener:
        """The rebalance listener that feeds this ownership from its subscription's consumer."""
        return _OwnershipListener(self)


async def _run(hooks: list[PartitionHook], partitions: frozenset[int], what: str) -> None:
    for hook in hooks:
        try:
            await hook(partitions)
        except Exception:  # a failed hook must not stop the rebalance; state reloads lazily
            log.exception("partition hook failed", extra={"hook": what})


class _OwnershipListener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, ownership: PartitionOwnership) -> None:
        self._ownership = ownership

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._ownership.revoked(_of_topic(revoked, self._ownership.topic))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._ownership.assigned(_of_topic(assigned, self._ownership.topic))


def _of_topic(partitions: set[TopicPartition], topic: str) -> list[int]:
    return [tp.partition for tp in partitions if tp.topic == topic]


#: The assignor's protocol name; every consumer of a group must offer it to get it.
CO_PARTITIONED = "flywheel-copartitioned"


def co_partitioned(
    members: Mapping[str, tuple[str, Sequence[str]]], counts: Mapping[str, int]
) -> dict[str, dict[str, list[int]]]:
    """Each member's partitions: partition ``p`` of every topic goes to one replica.

    ``members``: member id → (its replica, its topics); ``counts``: each topic's
    partition count. The replicas subscribed to a topic take its partitions in turn
    (``p`` to the ``p mod n``-th, sorted by name), so topics with equal counts and
    subscribers put partition ``p`` on the same replica; a replica's members of one
    topic share that replica's partitions in turn.

    >>> co_partitioned({"a1": ("a", ["t", "u"]), "b1": ("b", ["t"]), "b2": ("b", ["u"])},
    ...                {"t": 2, "u": 2})
    {'a1': {'t': [0], 'u': [0]}, 'b1': {'t': [1]}, 'b2': {'u': [1]}}
    """
    assignment: dict[str, dict[str, list[int]]] = {member: {} for member in members}
    for topic, count in sorted(counts.items()):
        by_replica: dict[str, list[str]] = defaultdict(list)
        for member, (replica, topics) in sorted(members.items()):
            if topic in topics:
                by_replica[replica].append(member)
        replicas = sorted(by_replica)
        for partition in range(count if replicas else 0):
            replica_members = by_replica[replicas[partition % len(replicas)]]
            member = replica_members[partition // len(replicas) % len(replica_members)]
            assignment[member].setdefault(topic, []).append(partition)
    return assignment


class CoPartitionedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # aiokafka is untyped
    """A consumer-group assignor putting partition ``p`` of every topic on one replica.

    Each member names its replica in its metadata; the leader sends every member
    the partition counts it used, so each replica maps models to partitions as the
    leader did. Use ``co_partitioned_assignor`` for a replica's own class.
    """

    name = CO_PARTITIONED
    version = 0
    replica = ""
    #: Each replica's class has its own (``co_partitioned_assignor``).
    counts: ClassVar[dict[str, int]] = {}

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """Partition ``p`` of each topic to one replica; the counts ride along to each member."""
        topics = {topic for metadata in members.values() for topic in metadata.subscription}
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        replicas = {
            member: ((metadata.user_data or b"").decode() or member, metadata.subscription)
            for member, metadata in members.items()
        }
        user_data = json.dumps(counts).encode()
        return {
            member: ConsumerProtocolMemberAssignment(
                cls.version, sorted(partitions.items()), user_data
            )
            for member, partitions in co_partitioned(replicas, counts).items()
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        """This member's topics, and its replica."""
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), cls.replica.encode())

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Keep the partition counts the leader assigned with."""
        cls.counts.update(json.loads(assignment.user_data or b"{}"))

    @classmethod
    def partitions_of(cls, topic: str) -> int | None:
        """The partition count of ``topic`` in the last assignment (None: not assigned by us)."""
        return cls.counts.get(topic)


def co_partitioned_assignor(replica: str | None = None) -> type[CoPartitionedAssignor]:
    """The assignor class of one replica (aiokafka takes classes): give it to all its consumers."""
    name = replica or uuid.uuid4().hex
    attributes: dict[str, Any] = {"replica": name, "counts": {}}
    return type(f"CoPartitionedAssignor_{name}", (CoPartitionedAssignor,), attributes)


#: Applies a list of commands only while KEYS[1] (the epoch) still holds ARGV[1].
#: ARGV[2] is the number of commands; each is: name, index of its key in KEYS, argument
#: count, arguments. Returns {1} when applied, {0, stored epoch} when fenced off.
_FENCED_APPLY = """
local stored = redis.call('GET', KEYS[1])
if stored ~= ARGV[1] then
  return {0, stored or ''}
end
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local name, key, count = ARGV[i], KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2])
  redis.call(name, key, unpack(ARGV, i + 3, i + 2 + count))
  i = i + 3 + count
end
return {1}
"""


@dataclass(frozen=True)
class Fence:
    """A replica's right to write one model's state: the epoch it took and where it lives."""

    key: str
    epoch: int


@dataclass(frozen=True)
class Write:
    """One Redis command of a fenced write (its key in the fence's hash slot)."""

    command: str
    key: str
    args: tuple[str | bytes | int | float, ...] = ()


class RedisFencing:
    """Epochs per model in Redis, and writes applied only under the current epoch.

    The epoch key (``flywheel:<service>:{<model>}:epoch``) shares the model's hash
    tag, so one script checks it and writes the model's keys on one Redis Cluster
    slot. It never expires: an epoch that started again from 1 would let a zombie in.
    """

    def __init__(self, redis: Redis | RedisCluster, service: str) -> None:
        self._redis = redis
        self._service = service

    def epoch_key(self, model_name: str) -> str:
        """Where ``model_name``'s epoch is kept for this service."""
        return model_key(self._service, model_name, "epoch")

    async def take(self, model_name: str) -> Fence:
        """A new epoch of ``model_name``: from now on, every earlier holder is fenced off."""
        key = self.epoch_key(model_name)
        try:
            epoch = int(await self._redis.incr(key))
        except RedisError as error:
            raise _translated(error, f"epoch of {model_name!r}") from error
        return Fence(key, epoch)

    async def apply(self, fence: Fence, writes: Sequence[Write]) -> None:
        """Apply ``writes`` atomically while ``fence`` is current, else raise FencedOffError."""
        keys = [fence.key]
        args: list[str | bytes | int | float] = [fence.epoch, len(writes)]
        for write in writes:
            keys.append(write.key)
            args += [write.command, len(keys), len(write.args), *write.args]
        try:
            result = await self._redis.eval(_FENCED_APPLY, len(keys), *keys, *args)
        except RedisError as error:
            raise _translated(error, f"fenced write under {fence.key}") from error
        if int(result[0]) != 1:
            stored = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
            raise FencedOffError(
                f"{fence.key} is at epoch {stored or 'none'}, this replica holds {fence.epoch}: "
                "another replica owns this state now"
            )

    async def fenced_save(self, key: str, value: str | bytes, fence: Fence) -> None:
        """SET ``key`` to ``value`` while ``fence`` is current, else raise FencedOffError."""
        await self.apply(fence, [Write("SET", key, (value,))])


def _translated(error: RedisError, what: str) -> FlywheelError:
    """An unreachable Redis is an outage (retried later); any other error is a fault."""
    outage = isinstance(error, (RedisConnectionError, RedisTimeoutError))
    kind = DependencyUnavailableError if outage else FlywheelError
    return kind(f"Redis: {what}: {error!r}")
