"""The topics Flywheel owns: one declared plan, created and checked at start-up.

Nothing relies on the broker creating a topic on first use (the local broker
refuses to). ``flywheel up`` creates every topic of the plan as the operator;
each service, at its start, ensures the topics it publishes or consumes (and
the dead-letter topics of those it consumes), which its ACLs allow it to
create. A topic that exists already is compared with the plan: fewer
partitions than planned is a ``TopicMismatchError`` (unless the policy says
"warn"), since each model's key hashes to one partition of the planned count
and replicas share work by partitions; any other difference (replication,
retention, compression, min.insync.replicas) is a warning, as an operator may
have changed it on purpose. More partitions than planned is fine. Creation
is idempotent: when N replicas start at once, "already exists" is success.

Retention by role: traffic topics (one record per prediction or outcome)
are the bulk and are kept 7 days; lifecycle topics (trainings, approvals,
promotions, routing, drift) are small and kept 30 days; dead letters 14 days,
time enough to look at them and replay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from shared.asyncapi import CONSUMERS, PUBLISHERS
from shared.errors import DependencyUnavailableError, TopicMismatchError
from shared.events import Topic, dead_letter_topic, topic_name
from shared.kafka_security import KafkaConnection

log = logging.getLogger(__name__)

Compression = Literal["lz4", "zstd"]
FewerPartitions = Literal["error", "warn"]

#: One record per prediction or outcome: the bulk of the data, read by the router and monitor.
TRAFFIC_TOPICS: frozenset[Topic] = frozenset(
    {Topic.PREDICTION_LOGGED, Topic.PREDICTION_FAILED, Topic.FEEDBACK_RECEIVED}
)

DAY_S = 24 * 3600


@dataclass(frozen=True)
class TopicPolicy:
    """How every Flywheel topic is to be (``BaseServiceSettings.topic_policy`` reads it)."""

    partitions: int = 12
    replication_factor: int = 1
    #: None: replication − 1 (2 of 3), so one broker may be down while acks=all still succeeds.
    min_insync_replicas: int | None = None
    #: zstd: with aiokafka's codecs (cramjam), 4x less CPU than its lz4 (level 9) and smaller.
    compression: Compression = "zstd"
    traffic_retention_s: int = 7 * DAY_S
    state_retention_s: int = 30 * DAY_S
    dead_letter_retention_s: int = 14 * DAY_S
    on_fewer_partitions: FewerPartitions = "error"

    def insync_replicas(self) -> int | None:
        """min.insync.replicas for the topics; None with a single copy (nothing to say).

        >>> TopicPolicy(replication_factor=3).insync_replicas(), TopicPolicy().insync_replicas()
        (2, None)
        """
        if self.replication_factor <= 1:
            return None
        return self.min_insync_replicas or max(1, self.replication_factor - 1)


@dataclass(frozen=True)
class PlannedTopic:
    """One topic as the plan declares it (``config``: the topic-level settings Flywheel sets)."""

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FoundTopic:
    """One topic as the broker describes it."""

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


class Mismatch(NamedTuple):
    """A difference between a planned and an existing topic."""

    topic: str
    setting: str
    expected: str
    found: str
    #: Whether services cannot run with it (fewer partitions, unless the policy says "warn").
    fatal: bool = False

    def __str__(self) -> str:
        return f"topic {self.topic}: {self.setting} is {self.found}, the plan says {self.expected}"


def _retention_s(topic: Topic, policy: TopicPolicy) -> int:
    traffic = topic in TRAFFIC_TOPICS
    return policy.traffic_retention_s if traffic else policy.state_retention_s


def _planned(name: str, retention_s: int, policy: TopicPolicy) -> PlannedTopic:
    config = {"retention.ms": str(retention_s * 1000), "compression.type": policy.compression}
    insync = policy.insync_replicas()
    if insync is not None:
        config["min.insync.replicas"] = str(insync)
    return PlannedTopic(name, policy.partitions, policy.replication_factor, config)


def plan_topics(
    policy: TopicPolicy,
    topics: Iterable[Topic] = tuple(Topic),
    dead_letters: Iterable[Topic] | None = None,
) -> list[PlannedTopic]:
    """The plan of ``topics`` and of the dead-letter topics of ``dead_letters`` (default:
    of ``topics``), names under this deployment's prefix.

    >>> [(t.name, t.config["retention.ms"]) for t in plan_topics(TopicPolicy(), [Topic.PREDICTION_LOGGED])]
    [('flywheel.prediction-logged', '604800000'), ('flywheel.prediction-logged.dlq', '1209600000')]
    """  # noqa: E501
    topics = list(topics)
    planned = [_planned(topic_name(t), _retention_s(t, policy), policy) for t in topics]
    parked = topics if dead_letters is None else list(dead_letters)
    return planned + [
        _planned(dead_letter_topic(t), policy.dead_letter_retention_s, policy) for t in parked
    ]


def service_plan(service: str, policy: TopicPolicy) -> list[PlannedTopic]:
    """The topics ``service`` publishes or consumes, and the dead-letter topics of those it
    consumes: what it may create on a broker with ACLs (``flywheel.infra.kafka_acl``)."""
    consumed = [t for t in Topic if service in CONSUMERS.get(t, ())]
    touched = [t for t in Topic if service in PUBLISHERS.get(t, ()) or t in consumed]
    return plan_topics(policy, touched, consumed)


def compare(
    planned: PlannedTopic, found: FoundTopic, fewer_partitions: FewerPartitions = "error"
) -> list[Mismatch]:
    """How ``found`` differs from ``planned``; more partitions than planned is no difference."""
    mismatches = []
    if found.partitions < planned.partitions:
        mismatches.append(
            Mismatch(
                planned.name,
                "partitions",
                str(planned.partitions),
                str(found.partitions),
                fatal=fewer_partitions == "error",
            )
        )
    if found.replication_factor != planned.replication_factor:
        mismatches.append(
            Mismatch(
                planned.name,
                "replication factor",
                str(planned.replication_factor),
                str(found.replication_factor),
            )
        )
    for key, expected in planned.config.items():
        actual = found.config.get(key)
        if actual != expected:
            mismatches.append(Mismatch(planned.name, key, expected, str(actual)))
    return mismatches


@dataclass
class TopicsReport:
    """What ``ensure_topics`` did and found."""

    created: list[str] = field(default_factory=list)
    #: Every planned topic's partition count (as created, or as found).
    partitions: dict[str, int] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)


async def ensure_topics(
    kafka: KafkaConnection,
    plan: Sequence[PlannedTopic],
    fewer_partitions: FewerPartitions = "error",
    request_timeout_ms: int = 10000,
) -> TopicsReport:
    """Create the missing topics of ``plan``, compare the existing ones with it.

    Logs each mismatch (an error when fatal, else a warning) and raises
    ``TopicMismatchError`` naming the fatal ones; ``DependencyUnavailableError``
    when Kafka does not answer or refuses a creation for another reason than
    "already exists".
    """
    admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        report = await _ensure(admin, plan, fewer_partitions)
    except (KafkaError, OSError) as error:
        raise DependencyUnavailableError(f"Kafka did not answer: {error!r}") from error
    finally:
        await admin.close()
    _log(report)
    fatal = [m for m in report.mismatches if m.fatal]
    if fatal:
        raise TopicMismatchError([(m.topic, m.setting, m.expected, m.found) for m in fatal])
    return report


async def _ensure(
    admin: AIOKafkaAdminClient, plan: Sequence[PlannedTopic], fewer_partitions: FewerPartitions
) -> TopicsReport:
    existing = set(await admin.list_topics())
    report = TopicsReport()
    missing = [t for t in plan if t.name not in existing]
    report.created = await _create(admin, missing)
    for topic in missing:
        report.partitions[topic.name] = topic.partitions
    # "Already exists" for one not listed: a peer's creation, or one the broker's metadata
    # did not show yet. Either way it is compared like one that was listed.
    raced = [t for t in missing if t.name not in report.created]
    described = [t for t in plan if t.name in existing] + raced
    found = await _describe(admin, [t.name for t in described])
    for topic in described:
        report.partitions[topic.name] = found[topic.name].partitions
        report.mismatches += compare(topic, found[topic.name], fewer_partitions)
    return report


async def _create(admin: AIOKafkaAdminClient, topics: Sequence[PlannedTopic]) -> list[str]:
    """Create ``topics``; return the names this call created (not those that raced it)."""
    if not topics:
        return []
    response = await admin.create_topics(
        [
            NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=dict(t.config))
            for t in topics
        ]
    )
    created, refused = [], []
    for name, code, *message in response.topic_errors:
        if code == 0:
            created.append(name)
        elif code != TopicAlreadyExistsError.errno:
            refused.append(f"{name}: {for_code(code).__name__} {message[0] if message else ''}")
    if refused:
        raise DependencyUnavailableError("Kafka refused to create topics: " + "; ".join(refused))
    return created


async def _describe(admin: AIOKafkaAdminClient, names: Sequence[str]) -> dict[str, FoundTopic]:
    """Partitions, replication and topic configs of the existing topics ``names``."""
    if not names:
        return {}
    metadata = await _metadata(admin, names)
    configs = await _configs(admin, names)
    found = {}
    for entry in metadata:
        partitions = entry["partitions"]
        replication = max((len(p["replicas"]) for p in partitions), default=0)
        name = entry["topic"]
        found[name] = FoundTopic(name, len(partitions), replication, configs.get(name, {}))
    return found


async def _metadata(
    admin: AIOKafkaAdminClient, names: Sequence[str], attempts: int = 40, wait_s: float = 0.25
) -> list[dict[str, Any]]:
    """The topics' metadata, once every one has its partitions: a topic created a moment
    ago may be unknown to the broker answering for a little while (KRaft propagates it)."""
    for _ in range(attempts - 1):
        metadata: list[dict[str, Any]] = await admin.describe_topics(list(names))
        if all(entry["error_code"] == 0 and entry["partitions"] for entry in metadata):
            return metadata
        await asyncio.sleep(wait_s)
    metadata = await admin.describe_topics(list(names))
    unknown = [e["topic"] for e in metadata if e["error_code"] != 0 or not e["partitions"]]
    if unknown:
        raise DependencyUnavailableError(f"Kafka does not describe topics {unknown} yet")
    return metadata


async def _configs(admin: AIOKafkaAdminClient, names: Sequence[str]) -> dict[str, dict[str, str]]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    responses: list[Any] = await admin.describe_configs(resources)
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for code, _message, _type, name, entries in response.resources:
            if code == 0:
                configs[name] = {entry[0]: entry[1] for entry in entries}
    return configs


def _log(report: TopicsReport) -> None:
    if report.created:
        log.info("created topics", extra={"topics": report.created})
    for mismatch in report.mismatches:
        fields = {
            "topic": mismatch.topic,
            "setting": mismatch.setting,
            "expected": mismatch.expected,
            "found": mismatch.found,
        }
        level = logging.ERROR if mismatch.fatal else logging.WARNING
        log.log(level, f"topic differs from the plan: {mismatch}", extra=fields)
