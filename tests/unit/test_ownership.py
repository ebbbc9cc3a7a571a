"""Partition ownership: model → partition as the producer does it, co-partitioned
assignments, the ownership's answers and hooks, and the listener composed with readiness."""

from __future__ import annotations

import inspect
import itertools
import uuid
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from shared.errors import FencedOffError
from shared.events import PredictionLogged, Topic, topic_name
from shared.messaging import OUTAGE_ERRORS
from shared.messaging.health import SubscriptionHealth
from shared.messaging.publisher import batches_of, message_key, partition_of
from shared.ownership import (
    PartitionOwnership,
    co_partitioned,
    co_partitioned_assignor,
    model_partition,
)

PARTITIONS = 12
MODELS = [f"model-{i}" for i in range(200)] + ["churn", "card-fraud", "customer-segment"]


def _event(model_name: str) -> PredictionLogged:
    return PredictionLogged(
        producer="gateway",
        request_id="r",
        model_name=model_name,
        version="1",
        variant="champion",
        features={"a": 1.0},
        predicted_class="steady",
        confidence=0.9,
        latency_ms=1.0,
    )


def test_a_model_maps_to_the_partition_the_producer_gives_its_events() -> None:
    # The producer's own default partitioner (what a single publish uses) ...
    default = inspect.signature(AIOKafkaProducer).parameters["partitioner"].default
    every = list(range(PARTITIONS))
    for model in MODELS:
        key = message_key(_event(model))
        assert model_partition(model, PARTITIONS) == default(key, every, every)
        # ... and the publisher's batches, which pick the partition themselves.
        assert model_partition(model, PARTITIONS) == partition_of(key, every)
    ((group, _),) = batches_of([_event("churn")], {topic_name(Topic.PREDICTION_LOGGED): every})
    assert group.partition == model_partition("churn", PARTITIONS)
    # Models spread over the partitions (not all on one).
    spread = Counter(model_partition(m, PARTITIONS) for m in MODELS)
    assert len(spread) == PARTITIONS


def _tp(*partitions: int, topic: str = "t") -> set[TopicPartition]:
    return {TopicPartition(topic, p) for p in partitions}


async def test_ownership_follows_assignments_and_runs_its_hooks() -> None:
    calls: list[tuple[str, frozenset[int]]] = []
    ownership = PartitionOwnership("t", lambda topic: PARTITIONS)

    async def acquired(partitions: frozenset[int]) -> None:
        calls.append(("acquired", partitions))

    async def released(partitions: frozenset[int]) -> None:
        # Released before the ownership forgets them: the flush still owns its models.
        assert all(ownership.owns(m) for m in MODELS if ownership.partition(m) in partitions)
        calls.append(("released", partitions))

    ownership.on_acquired(acquired)
    ownership.on_released(released)
    assert ownership.owns("churn")  # never assigned (an in-memory broker): epochs alone guard
    churn = model_partition("churn", PARTITIONS)
    other = (churn + 1) % PARTITIONS
    listener = ownership.listener()
    await listener.on_partitions_assigned(_tp(churn) | _tp(other, topic="elsewhere"))
    assert ownership.owns("churn")
    assert {m for m in MODELS if ownership.owns(m)} == {
        m for m in MODELS if model_partition(m, PARTITIONS) == churn
    }
    await listener.on_partitions_revoked(_tp(churn))
    assert not ownership.owns("churn")
    await listener.on_partitions_assigned(_tp(other))
    assert not ownership.owns("churn")
    assert calls == [
        ("acquired", frozenset({churn})),
        ("released", frozenset({churn})),
        ("acquired", frozenset({other})),
    ]


async def test_a_model_fenced_off_is_not_owned_before_the_next_assignment() -> None:
    ownership = PartitionOwnership("t", lambda topic: PARTITIONS)
    await ownership.assigned(range(PARTITIONS))
    ownership.lose("churn")
    assert not ownership.owns("churn")
    assert ownership.owns("card-fraud")
    await ownership.assigned(range(PARTITIONS))
    assert ownership.owns("churn")


async def test_a_failing_hook_does_not_stop_the_rebalance() -> None:
    ownership = PartitionOwnership("t", lambda topic: PARTITIONS)

    async def broken(partitions: frozenset[int]) -> None:
        raise RuntimeError("Redis went away")

    ownership.on_acquired(broken)
    await ownership.assigned([1])
    assert ownership.owns(next(m for m in MODELS if model_partition(m, PARTITIONS) == 1))


async def test_unknown_partition_counts_leave_every_model_owned() -> None:
    # A group that fell back to round robin sends no counts: the epochs alone guard.
    ownership = PartitionOwnership("t", lambda topic: None)
    await ownership.assigned([0])
    assert all(ownership.owns(m) for m in MODELS)


@pytest.mark.parametrize("replicas", [1, 2, 3, 5, 7])
def test_partition_p_of_every_topic_goes_to_one_replica(replicas: int) -> None:
    topics = ["prediction-logged", "feedback-received", "model-promoted"]
    # Each replica runs one consumer per topic, as each subscription is a consumer; Kafka
    # names members by client id and a random suffix, so their order says nothing.
    members = {
        f"flywheel-monitor-{uuid.uuid4()}": (f"replica-{replica}", [topic])
        for replica, topic in itertools.product(range(replicas), topics)
    }
    assignment = co_partitioned(members, dict.fromkeys(topics, PARTITIONS))
    owner: dict[tuple[str, int], str] = {}
    for member, partitions in assignment.items():
        for topic, numbers in partitions.items():
            for partition in numbers:
                assert (topic, partition) not in owner  # each partition assigned once
                owner[topic, partition] = members[member][0]
    assert len(owner) == len(topics) * PARTITIONS  # and every one is
    for partition in range(PARTITIONS):
        assert len({owner[topic, partition] for topic in topics}) == 1
    load = Counter(owner["prediction-logged", p] for p in range(PARTITIONS))
    assert max(load.values()) - min(load.values()) <= 1


def test_two_members_of_one_replica_share_its_partitions() -> None:
    members = {"a1": ("a", ["t"]), "a2": ("a", ["t"]), "b1": ("b", ["t"])}
    assignment = co_partitioned(members, {"t": 4})
    assert assignment == {"a1": {"t": [0]}, "a2": {"t": [2]}, "b1": {"t": [1, 3]}}


class _Cluster:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.counts[topic])) if topic in self.counts else None


def test_the_assignor_names_its_replica_and_hands_every_member_the_counts() -> None:
    first, second = co_partitioned_assignor("one"), co_partitioned_assignor("two")
    members = {
        "m1": first.metadata(["t", "u"]),
        "m2": second.metadata(["t"]),
        "m3": second.metadata(["u"]),
    }
    assert isinstance(members["m1"], ConsumerProtocolMemberMetadata)
    assignment = first.assign(_Cluster({"t": 4, "u": 4}), members)
    assert set(assignment["m1"].partitions()) == _tp(0, 2) | _tp(0, 2, topic="u")
    assert set(assignment["m2"].partitions()) == _tp(1, 3)
    second.on_assignment(assignment["m2"])
    assert second.partitions_of("t") == 4
    assert first.partitions_of("t") is None  # each replica's class keeps its own counts


class _Recording(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.calls.append("revoked")

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.calls.append("assigned")


async def test_extra_listeners_hear_a_subscription_s_rebalances_and_readiness_still_works() -> None:
    health = SubscriptionHealth()
    listener = health.listener("t")
    extra = _Recording()
    health.also_listen("t", extra)  # given after the subscription took its listener
    assert health.waiting == {"t"}
    await listener.on_partitions_assigned(_tp(0))
    await listener.on_partitions_revoked(_tp(0))
    assert health.waiting == frozenset()
    assert extra.calls == ["assigned", "revoked"]


def test_a_fenced_off_write_is_an_outage_to_the_subscriptions() -> None:
    # Not committed, not dead-lettered: rewound for whoever owns the partition now.
    assert isinstance(FencedOffError("x"), OUTAGE_ERRORS)


async def test_unequal_co_partitioned_counts_turn_ownership_off_rather_than_stall() -> None:
    counts = {"predictions": PARTITIONS, "feedback": PARTITIONS}
    ownership = PartitionOwnership("predictions", counts.get, co_partitioned=["feedback"])
    await ownership.assigned([0])
    assert not all(ownership.owns(m) for m in MODELS)
    counts["feedback"] = 2 * PARTITIONS  # a model's feedback may reach another replica
    await ownership.assigned([0])
    assert all(ownership.owns(m) for m in MODELS)


def test_a_redis_cluster_failing_over_is_an_outage_to_the_subscriptions() -> None:
    from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError

    for error in (ClusterDownError("down"), TryAgainError("again"), SlotNotCoveredError("s")):
        assert isinstance(error, OUTAGE_ERRORS)
