"""Drive and watch the loop from outside: announce data, follow events, call the gateway.

Used by ``flywheel demo``, ``flywheel data push`` and the end-to-end tests, so
all three exercise the system exactly as a user would: through Kafka and HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import ValidationError

from shared.events import (
    DataArrived,
    DatasetRef,
    Event,
    ExperimentUpdated,
    Topic,
    dead_letter_topic,
    parse_event,
    topic_name,
)
from shared.kafka_security import KafkaConnection, as_connection
from shared.messaging import message_key

E = TypeVar("E", bound=Event)


def deployment_topics() -> list[str]:
    """Every topic of this deployment (its prefix applied), dead-letter topics included."""
    return [topic_name(t) for t in Topic] + [dead_letter_topic(t) for t in Topic]


async def ensure_topics(kafka: KafkaConnection | str, topics: list[str]) -> None:
    """Create missing topics (one partition, replication 1, as on a single local broker)."""
    admin = AIOKafkaAdminClient(**as_connection(kafka).client_options())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(t, num_partitions=1, replication_factor=1) for t in topics if t not in existing
        ]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()


async def publish_raw(
    kafka: KafkaConnection | str, topic: str, value: bytes, key: bytes | None = None
) -> None:
    """Publish raw bytes (used to show what happens to a malformed event)."""
    producer = AIOKafkaProducer(**as_connection(kafka).client_options())
    try:
        await producer.start()  # inside: a refused start still closes the client
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def publish_event(kafka: KafkaConnection | str, event: Event) -> None:
    """Publish ``event`` on its topic, keyed by its model as the services key theirs."""
    body = event.model_dump_json().encode()
    await publish_raw(kafka, topic_name(event.topic), body, key=message_key(event))


async def current_routing(
    router_url: str | None, model: str | None = None
) -> ExperimentUpdated | None:
    """``model``'s routing table (None: the default model's); None when the model has
    none yet (no version approved) or there is no router."""
    if router_url is None:
        return None
    params = {"model": model} if model else None
    async with httpx.AsyncClient(base_url=router_url, timeout=30) as client:
        response = await client.get("/v1/experiments/current", params=params)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return ExperimentUpdated.model_validate(response.json())


async def announce(
    kafka: KafkaConnection | str,
    dataset: DatasetRef,
    producer: str = "cli",
    *,
    model_name: str | None = None,
) -> DataArrived:
    """Publish ``data-arrived`` for a batch of ``model_name`` (None: the default model)."""
    event = DataArrived(producer=producer, dataset=dataset, model_name=model_name)
    await publish_event(kafka, event)
    return event


@dataclass
class DeadLetter:
    """A record found on a dead-letter topic."""

    topic: str
    value: bytes
    headers: dict[str, str]


@dataclass
class EventTap:
    """Reads every Flywheel topic from the moment it starts, so steps can wait for events."""

    kafka: KafkaConnection | str
    events: list[Event] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    malformed: list[bytes] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        topics = deployment_topics()
        await ensure_topics(self.kafka, topics)
        options = as_connection(self.kafka).client_options()
        consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
        await consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in (consumer.partitions_for_topic(topic) or {0})
        ]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:  # resolve positions now, not at the first fetch
            await consumer.position(partition)
        self._consumer = consumer
        self._task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task:
            self._task.cancel()
        if self._consumer:
            await self._consumer.stop()

    async def _pump(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            if record.topic.endswith(".dlq"):
                headers = {k: v.decode(errors="replace") for k, v in record.headers}
                self.dead_letters.append(DeadLetter(record.topic, record.value or b"", headers))
            else:
                try:
                    self.events.append(parse_event(record.value or b""))
                except ValidationError:
                    self.malformed.append(record.value or b"")  # the services dead-letter it

    async def wait_for(
        self,
        event_type: type[E],
        where: Callable[[E], bool] = lambda _: True,
        within_s: float = 120.0,
    ) -> E:
        """The first event of ``event_type`` matching ``where``, waiting up to ``within_s``."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for event in self.events:
                if isinstance(event, event_type) and where(event):
                    return event
            await asyncio.sleep(0.1)
        seen = [type(e).__name__ for e in self.events]
        raise TimeoutError(f"no {event_type.__name__} within {within_s:.0f} s; saw {seen}")

    async def wait_for_dead_letter(self, topic: str, within_s: float = 60.0) -> DeadLetter:
        """The first dead letter on ``topic``."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for letter in self.dead_letters:
                if letter.topic == topic:
                    return letter
            await asyncio.sleep(0.1)
        raise TimeoutError(f"nothing on {topic} within {within_s:.0f} s")

    def chain(self, event: Event) -> list[Event]:
        """``event`` and its causes, following ``causation_id`` back as far as the tap saw."""
        by_id = {e.event_id: e for e in self.events}
        chain = [event]
        while chain[-1].causation_id in by_id:
            chain.append(by_id[chain[-1].causation_id])
        return chain
