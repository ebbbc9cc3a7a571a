"""Where a consumer group that has committed nothing yet starts reading a topic.

- Lifecycle topics (trainings, approvals, promotions, routing, drift): from the
  earliest retained event. They are few, and a service's state is built from them.
- Traffic topics (``shared.topics.TRAFFIC_TOPICS``): a group with a committed
  offset goes on from it; a partition without one starts ``traffic_lookback_s``
  back in time (``KAFKA_TRAFFIC_LOOKBACK_S``, an hour by default; 0: at the
  end), found with ``offsets_for_times`` when the partition is assigned. A new
  router or monitor deployment therefore reads the last hour of predictions,
  not all 7 days retained, and a partition first assigned during a rebalance
  before anything on it was committed loses nothing younger than that.
- A broadcast subscription (one group per replica, ``subscribe_broadcast``):
  at the end, as the replica reads the current state itself when it starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from shared.events import Topic
from shared.messaging.health import ConsumerContext
from shared.topics import TRAFFIC_TOPICS

log = logging.getLogger(__name__)

OffsetReset = Literal["earliest", "latest"]


def auto_offset_reset(topic: Topic, broadcast: bool) -> OffsetReset:
    """Where a partition with no committed offset starts when nothing else seeks it.

    >>> auto_offset_reset(Topic.MODEL_APPROVED, False), auto_offset_reset(Topic.MODEL_APPROVED, True)
    ('earliest', 'latest')
    >>> auto_offset_reset(Topic.PREDICTION_LOGGED, False)
    'latest'
    """  # noqa: E501
    return "latest" if broadcast or topic in TRAFFIC_TOPICS else "earliest"


class StartPosition:
    """The start position of one subscription: its reset policy, and the look-back seek
    its rebalance listener makes first when it reads a traffic topic in a shared group."""

    def __init__(self, topic: Topic, ctx: ConsumerContext) -> None:
        broadcast = ctx.instance is not None
        self.reset: OffsetReset = auto_offset_reset(topic, broadcast)
        traffic = topic in TRAFFIC_TOPICS and not broadcast
        self.lookback_s = ctx.traffic_lookback_s if traffic else 0.0
        self._look_back: LookBack | None = None

    def listener(self, inner: ConsumerRebalanceListener) -> ConsumerRebalanceListener:
        """``inner``, preceded by the look-back seek when this subscription has one."""
        if self.lookback_s <= 0:
            return inner
        self._look_back = LookBack(inner, self.lookback_s)
        return self._look_back

    def watch(self, subscriber: object) -> None:
        """Hand the FastStream subscriber (whose consumer seeks) to the look-back."""
        if self._look_back is not None:
            self._look_back.watch(subscriber)


class LookBack(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """On assignment, seeks each partition the group never committed on to ``lookback_s``
    ago (its end when nothing is younger), then calls ``inner``.

    The consumer is FastStream's, known only once the subscriber started: ``watch``
    hands over the subscriber, whose ``consumer`` is set before it joins its group.
    A failed look-up leaves the partition to ``auto_offset_reset`` (the end) and says so.
    """

    def __init__(self, inner: ConsumerRebalanceListener, lookback_s: float) -> None:
        self._inner = inner
        self._lookback_s = lookback_s
        self._subscriber: object | None = None

    def watch(self, subscriber: object) -> None:
        """The FastStream subscriber whose consumer this listener serves."""
        self._subscriber = subscriber

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._inner.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = getattr(self._subscriber, "consumer", None)
        if isinstance(consumer, AIOKafkaConsumer) and assigned:
            try:
                await look_back(consumer, assigned, self._lookback_s)
            except KafkaError as error:
                log.warning(
                    "traffic look-back failed, uncommitted partitions start at the end",
                    extra={"error": repr(error)},
                )
        await self._inner.on_partitions_assigned(assigned)


async def look_back(
    consumer: AIOKafkaConsumer, assigned: set[TopicPartition], lookback_s: float
) -> dict[TopicPartition, int | None]:
    """Seek each of ``assigned`` without a committed offset to the first record of the last
    ``lookback_s`` (None: left at the end, nothing is that young); return where each went."""
    partitions = sorted(assigned)
    committed = await asyncio.gather(*(consumer.committed(tp) for tp in partitions))
    fresh = [tp for tp, offset in zip(partitions, committed, strict=True) if offset is None]
    if not fresh:
        return {}
    since_ms = int((time.time() - lookback_s) * 1000)
    found = await consumer.offsets_for_times({tp: since_ms for tp in fresh})
    starts: dict[TopicPartition, int | None] = {}
    for tp in fresh:
        hit = found.get(tp)
        # Nothing that young: the reset policy ("latest") already starts it at the end.
        starts[tp] = None if hit is None else hit.offset
        if hit is not None:
            consumer.seek(tp, hit.offset)
    log.info(
        "new consumer group starts traffic partitions at its look-back",
        extra={"lookback_s": lookback_s, "partitions": len(fresh)},
    )
    return starts
