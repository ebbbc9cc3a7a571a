"""The topic plan, the report of an existing topic's differences, and where new groups start."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import OffsetAndTimestamp

from flywheel.infra.config import InfraConfig
from flywheel.infra.kafka import server_properties
from flywheel.infra.kafka_acl import Acl, Operation, Resource, service_acls
from shared import runtime as runtime_module
from shared.errors import TopicMismatchError
from shared.events import Topic, dead_letter_topic, topic_name
from shared.messaging import producer_options
from shared.messaging.start_positions import LookBack, auto_offset_reset, look_back
from shared.runtime import build_runtime, service_app
from shared.settings import BaseServiceSettings
from shared.topics import (
    TRAFFIC_TOPICS,
    FoundTopic,
    PlannedTopic,
    TopicPolicy,
    TopicsReport,
    _ensure,
    _log,
    compare,
    plan_topics,
    service_plan,
)

DAY_MS = 24 * 3600 * 1000


def test_the_plan_holds_every_topic_and_its_dead_letters_with_retention_by_role() -> None:
    plan = {t.name: t for t in plan_topics(TopicPolicy())}
    assert len(plan) == 2 * len(Topic)
    assert {t.partitions for t in plan.values()} == {12}
    assert {t.config["compression.type"] for t in plan.values()} == {"zstd"}
    retention = {name: int(t.config["retention.ms"]) // DAY_MS for name, t in plan.items()}
    assert retention[topic_name(Topic.PREDICTION_LOGGED)] == 7
    assert retention[topic_name(Topic.FEEDBACK_RECEIVED)] == 7
    assert retention[topic_name(Topic.MODEL_APPROVED)] == 30
    assert retention[dead_letter_topic(Topic.PREDICTION_LOGGED)] == 14
    assert all("min.insync.replicas" not in t.config for t in plan.values())


def test_the_plan_follows_the_deployment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_TOPIC_PREFIX", "staging.")
    names = [t.name for t in plan_topics(TopicPolicy(), [Topic.MODEL_TRAINED])]
    assert names == ["staging.model-trained", "staging.model-trained.dlq"]


def test_replication_brings_min_insync_replicas() -> None:
    (topic, _) = plan_topics(TopicPolicy(replication_factor=3), [Topic.MODEL_TRAINED])
    assert (topic.replication_factor, topic.config["min.insync.replicas"]) == (3, "2")
    explicit = TopicPolicy(replication_factor=3, min_insync_replicas=3)
    assert plan_topics(explicit, [Topic.MODEL_TRAINED])[0].config["min.insync.replicas"] == "3"


def test_settings_read_the_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "KAFKA_PARTITIONS": "24",
        "KAFKA_REPLICATION_FACTOR": "3",
        "KAFKA_COMPRESSION": "lz4",
        "KAFKA_TRAFFIC_RETENTION_S": "3600",
        "KAFKA_ON_FEWER_PARTITIONS": "warn",
    }.items():
        monkeypatch.setenv(name, value)
    policy = BaseServiceSettings().topic_policy()
    assert policy == TopicPolicy(
        partitions=24,
        replication_factor=3,
        compression="lz4",
        traffic_retention_s=3600,
        on_fewer_partitions="warn",
    )
    assert producer_options(policy.compression)["compression_type"] == "lz4"


def test_a_service_plans_what_its_acls_let_it_create() -> None:
    names = {t.name for t in service_plan("gateway", TopicPolicy())}
    assert topic_name(Topic.PREDICTION_LOGGED) in names  # publishes
    assert dead_letter_topic(Topic.EXPERIMENT_UPDATED) in names  # consumes: parks there
    assert dead_letter_topic(Topic.PREDICTION_LOGGED) not in names  # not its to park
    assert topic_name(Topic.DATA_ARRIVED) not in names
    allowed = {
        acl.name
        for acl in service_acls("gateway")
        if acl.resource == Resource.TOPIC and acl.operation == Operation.CREATE
    }
    assert names <= allowed
    assert Acl("gateway", Resource.TOPIC, topic_name(Topic.PREDICTION_LOGGED), Operation.DESCRIBE_CONFIGS) in service_acls("gateway")  # fmt: skip  # noqa: E501


def _planned(partitions: int = 12) -> PlannedTopic:
    return plan_topics(TopicPolicy(partitions=partitions), [Topic.PREDICTION_LOGGED])[0]


def _found(partitions: int, replication: int = 1, **config: str) -> FoundTopic:
    planned = _planned()
    return FoundTopic(planned.name, partitions, replication, {**planned.config, **config})


def test_fewer_partitions_is_a_fatal_mismatch_naming_topic_expected_and_found() -> None:
    (mismatch,) = compare(_planned(), _found(1))
    assert (mismatch.topic, mismatch.setting, mismatch.expected, mismatch.found) == (
        "flywheel.prediction-logged",
        "partitions",
        "12",
        "1",
    )
    assert mismatch.fatal
    assert str(mismatch) == "topic flywheel.prediction-logged: partitions is 1, the plan says 12"
    assert not compare(_planned(), _found(1), "warn")[0].fatal


def test_more_partitions_is_fine_other_differences_warn() -> None:
    assert compare(_planned(), _found(24)) == []
    mismatches = compare(_planned(), _found(12, 3, **{"compression.type": "producer"}))
    assert [(m.setting, m.expected, m.found, m.fatal) for m in mismatches] == [
        ("replication factor", "1", "3", False),
        ("compression.type", "zstd", "producer", False),
    ]


@dataclass
class FakeAdmin:
    """The admin calls ``_ensure`` makes, answered from a dict of existing topics."""

    existing: dict[str, FoundTopic] = field(default_factory=dict)
    #: Existing topics the listing does not show (a peer's creation under way, lagging
    #: metadata): creating them answers "already exists".
    unlisted: set[str] = field(default_factory=set)
    create_requests: list[list[str]] = field(default_factory=list)

    async def list_topics(self) -> list[str]:
        return [name for name in self.existing if name not in self.unlisted]

    async def create_topics(self, new_topics: list[Any]) -> Any:
        self.create_requests.append([t.name for t in new_topics])
        errors = [
            (t.name, TopicAlreadyExistsError.errno if t.name in self.existing else 0, None)
            for t in new_topics
        ]
        for topic in new_topics:
            self.existing.setdefault(
                topic.name,
                FoundTopic(
                    topic.name, topic.num_partitions, topic.replication_factor, topic.topic_configs
                ),
            )
        return type("Response", (), {"topic_errors": errors})()

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [
            {
                "topic": name,
                "error_code": 0,
                "partitions": [
                    {
                        "partition": p,
                        "replicas": list(range(self.existing[name].replication_factor)),
                    }
                    for p in range(self.existing[name].partitions)
                ],
            }
            for name in names
        ]

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        rows = [
            (0, None, 2, r.name, [(k, v) for k, v in self.existing[r.name].config.items()])
            for r in resources
        ]
        return [type("Response", (), {"resources": rows})()]


async def test_ensuring_creates_the_missing_then_is_a_no_op() -> None:
    admin = FakeAdmin()
    plan = plan_topics(TopicPolicy(), [Topic.PREDICTION_LOGGED])
    first = await _ensure(admin, plan, "error")
    assert first.created == [t.name for t in plan]
    again = await _ensure(admin, plan, "error")
    assert (again.created, again.mismatches) == ([], [])
    assert admin.create_requests == [[t.name for t in plan]]
    assert again.partitions == {t.name: 12 for t in plan}


async def test_a_topic_a_peer_created_meanwhile_counts_as_ensured() -> None:
    plan = plan_topics(TopicPolicy(), [Topic.MODEL_TRAINED])
    peers = FoundTopic(plan[0].name, 12, 1, plan[0].config)
    admin = FakeAdmin(existing={peers.name: peers}, unlisted={peers.name})
    report = await _ensure(admin, plan, "error")
    assert report.created == [plan[1].name]
    assert report.mismatches == []


async def test_an_existing_topic_the_listing_missed_is_still_compared() -> None:
    planned = _planned()
    admin = FakeAdmin(existing={planned.name: _found(3)}, unlisted={planned.name})
    report = await _ensure(admin, [planned], "error")
    assert [(m.setting, m.found, m.fatal) for m in report.mismatches] == [("partitions", "3", True)]


async def test_an_existing_topic_with_fewer_partitions_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    planned = _planned()
    admin = FakeAdmin(existing={planned.name: _found(1)})
    report = await _ensure(admin, [planned], "error")
    assert [m.found for m in report.mismatches] == ["1"]
    with caplog.at_level(logging.ERROR, logger="shared.topics"):
        _log(report)
    (record,) = caplog.records
    assert (record.topic, record.setting, record.expected, record.found) == (  # type: ignore[attr-defined]
        planned.name,
        "partitions",
        "12",
        "1",
    )
    error = TopicMismatchError([(planned.name, "partitions", "12", "1")])
    assert str(error) == f"topic {planned.name}: partitions is 1, the plan says 12"


def test_new_groups_start_state_topics_at_the_earliest_traffic_at_the_latest() -> None:
    for topic in Topic:
        expected = "latest" if topic in TRAFFIC_TOPICS else "earliest"
        assert auto_offset_reset(topic, broadcast=False) == expected
        assert auto_offset_reset(topic, broadcast=True) == "latest"


@dataclass
class FakeConsumer:
    """Committed offsets and time index of a few partitions; records the seeks."""

    committed_offsets: dict[TopicPartition, int]
    by_time: dict[TopicPartition, OffsetAndTimestamp | None]
    seeks: dict[TopicPartition, int] = field(default_factory=dict)
    asked_since_ms: list[int] = field(default_factory=list)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    async def offsets_for_times(
        self, times: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        self.asked_since_ms += list(times.values())
        return {tp: self.by_time.get(tp) for tp in times}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset


async def test_look_back_seeks_only_partitions_never_committed_on() -> None:
    committed, young, old = (TopicPartition("t", p) for p in range(3))
    consumer = FakeConsumer(
        committed_offsets={committed: 40},
        by_time={young: OffsetAndTimestamp(7, 0), old: None},
    )
    starts = await look_back(consumer, {committed, young, old}, 3600)
    assert starts == {young: 7, old: None}  # old: nothing that young, it stays at the end
    assert consumer.seeks == {young: 7}
    assert len(consumer.asked_since_ms) == 2


async def test_the_look_back_listener_still_calls_the_readiness_listener() -> None:
    heard: list[set[TopicPartition]] = []

    class Inner:
        async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
            heard.append(assigned)

        async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            heard.append(revoked)

    listener = LookBack(Inner(), 60)
    listener.watch(object())  # no consumer yet (FastStream's test broker): no seek
    await listener.on_partitions_assigned({TopicPartition("t", 0)})
    assert heard == [{TopicPartition("t", 0)}]


def test_the_local_broker_creates_nothing_on_first_use(tmp_path: Any) -> None:
    properties = server_properties(InfraConfig(tmp_path), policy=TopicPolicy(partitions=6))
    assert "auto.create.topics.enable=false" in properties.splitlines()
    assert "num.partitions=6" in properties.splitlines()


def test_producers_are_idempotent_and_wait_for_every_in_sync_replica() -> None:
    options = producer_options("lz4")
    assert (options["enable_idempotence"], options["acks"]) == (True, "all")


async def test_a_service_whose_topic_is_unfit_serves_not_ready_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_CLUSTER", "false")  # nothing to ask: no Redis here
    found_one = ("flywheel.data-arrived", "partitions", "12", "1")
    calls: list[str] = []
    tried_again = asyncio.Event()

    async def refuse(*_: Any, **__: Any) -> TopicsReport:
        calls.append("ensure")
        if len(calls) == 2:
            tried_again.set()
        raise TopicMismatchError([found_one])

    monkeypatch.setattr(runtime_module, "ensure_topics", refuse)
    runtime = build_runtime("trainer", BaseServiceSettings())
    connecting = asyncio.create_task(runtime_module._start_broker(runtime, mismatch_retry_s=0.01))
    try:
        async with asyncio.timeout(5):
            await tried_again.wait()  # refused, and tried again
        transport = httpx.ASGITransport(app=service_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            answer = await client.get("/readyz")
    finally:
        connecting.cancel()
    assert answer.status_code == 503
    assert answer.json()["reasons"][0] == (
        "topic flywheel.data-arrived: partitions is 1, the plan says 12"
    )
    assert not runtime.broker_started.is_set()

    async def fine(*_: Any, **__: Any) -> TopicsReport:
        return TopicsReport()

    monkeypatch.setattr(runtime_module, "ensure_topics", fine)
    await runtime_module._ensure_topics(runtime)  # an operator added partitions
    assert runtime.topic_problems == []
