"""Bounded feedback records: the TTL follows the outcome window, and traffic outside an
experiment can be sampled (GATEWAY_RECORD_SAMPLE) while experiment traffic never is."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _gateway_fakes import (
    MODEL,
    SPEND,
    SPEND_SPEC,
    Gateway,
    open_gateway,
    registered,
    rows,
    spend_pipeline,
    spend_rows,
)

from services.gateway.feedback import RecordPolicy, is_experiment_traffic
from services.gateway.pool import LoadedModel, RoutingTable, ServingSnapshot
from services.gateway.settings import Settings
from shared.events import FeedbackReceived, PredictionLogged
from shared.testing import RecordingPublisher


def _logged(experiment_id: str | None = None, share: float | None = None) -> PredictionLogged:
    return PredictionLogged(
        producer="gateway",
        request_id=str(uuid.uuid4()),
        model_name=MODEL,
        version="1",
        variant="champion",
        features={},
        predicted_class="steady",
        confidence=0.9,
        latency_ms=1.0,
        experiment_id=experiment_id,
        challenger_share=share,
    )


def test_the_record_ttl_is_twice_the_outcome_window_and_at_least_a_day_unless_set() -> None:
    assert Settings().record_ttl_s == 86_400  # the router's default window, 30 s: a day
    assert RecordPolicy(86_400, 1.0).window() == "1 day"
    assert Settings(outcome_window_s=86_400).record_ttl_s == 172_800
    assert Settings(outcome_window_s=86_400.4).record_ttl_s == 172_801  # whole seconds
    assert Settings(outcome_window_s=3600, feedback_ttl_s=60).record_ttl_s == 60


def test_the_ttl_and_sample_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_OUTCOME_WINDOW_S", "90000")
    monkeypatch.setenv("GATEWAY_RECORD_SAMPLE", "0.25")
    settings = Settings()
    assert (settings.record_ttl_s, settings.record_sample) == (180_000, 0.25)
    monkeypatch.setenv("GATEWAY_RECORD_SAMPLE", "1.5")
    with pytest.raises(ValueError, match="record_sample"):
        Settings()


def test_experiment_traffic_is_what_the_router_counts() -> None:
    assert is_experiment_traffic(_logged("exp-1", 0.05))
    assert not is_experiment_traffic(_logged())
    # An ended experiment stays in the routing table at share 0: the router ignores it.
    assert not is_experiment_traffic(_logged("exp-1", 0.0))


def test_experiment_traffic_is_always_recorded_whatever_the_sample() -> None:
    policy = RecordPolicy(ttl_s=60, sample=0.0)
    assert all(policy.keeps(_logged("exp-1", 0.1)) for _ in range(200))
    assert not any(policy.keeps(_logged()) for _ in range(200))
    assert not any(policy.keeps(_logged("exp-1", 0.0)) for _ in range(200))
    assert all(RecordPolicy(ttl_s=60).keeps(_logged()) for _ in range(200))


def test_the_sample_keeps_its_share_and_the_same_id_always_gets_the_same_answer() -> None:
    rng = random.Random(7)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(20_000)]
    for share in (0.01, 0.1, 0.5):
        policy = RecordPolicy(ttl_s=60, sample=share)
        kept = sum(policy.sampled(request_id) for request_id in ids)
        assert kept / len(ids) == pytest.approx(share, abs=0.01)
        assert [policy.sampled(i) for i in ids[:500]] == [policy.sampled(i) for i in ids[:500]]
    # Batch rows (<id>-<i>) are sampled each on its own.
    policy = RecordPolicy(ttl_s=60, sample=0.5)
    rows_kept = {policy.sampled(f"{ids[0]}-{i}") for i in range(64)}
    assert rows_kept == {True, False}


def test_the_window_is_named_in_words() -> None:
    assert [RecordPolicy(ttl_s=s).window() for s in (45, 60, 7200, 7 * 86_400, 90)] == [
        "45 s",
        "1 min",
        "2 h",
        "7 days",
        "90 s",
    ]


@pytest.fixture
async def sampled_out() -> AsyncIterator[Gateway]:
    """A gateway recording no prediction outside experiments."""
    async for gw in open_gateway(RecordingPublisher(), record_sample=0.0):
        yield gw


async def _predict(gateway: Gateway, n: int) -> list[str]:
    response = await gateway.client.post("/v1/predict", json={"instances": rows(n)})
    assert response.status_code == 200, response.text
    await gateway.drain()
    return [p["request_id"] for p in response.json()["predictions"]]


async def _feedback(gateway: Gateway, request_id: str, **outcome: Any) -> Any:
    body = {"request_id": request_id, **(outcome or {"true_label": "steady"})}
    return await gateway.client.post("/v1/feedback", json=body)


async def test_traffic_outside_experiments_is_published_but_not_recorded(
    sampled_out: Gateway,
) -> None:
    sampled_out.serve()  # no experiment
    ids = await _predict(sampled_out, 4)
    # Drift detection still sees every prediction; only the feedback record is skipped.
    assert [e.request_id for e in sampled_out.publisher.of_type(PredictionLogged)] == ids
    assert sampled_out.records.records == {}
    answer = await _feedback(sampled_out, ids[0])
    assert answer.status_code == 404
    message = answer.json()["detail"]["message"]
    assert "GATEWAY_RECORD_SAMPLE=0" in message
    assert "no need to retry" in message
    assert sampled_out.metric("feedback_received_total", model_name=MODEL, outcome="not_recorded")
    assert not sampled_out.publisher.of_type(FeedbackReceived)


async def test_experiment_traffic_is_recorded_and_its_feedback_counts(
    sampled_out: Gateway,
) -> None:
    sampled_out.serve(share=0.5)  # an experiment runs: both arms are recorded
    ids = []
    for entity in [f"c-{i}" for i in range(10)]:  # an entity's arm is fixed: both arms here
        body = {"features": rows(1)[0], "entity_id": entity}
        ids.append((await sampled_out.client.post("/v1/predict", json=body)).json()["request_id"])
    await sampled_out.drain()
    assert set(sampled_out.records.records) == set(ids)
    recorded = sampled_out.records.records.values()
    assert {e.variant for e in recorded} == {"champion", "challenger"}
    answers = [await _feedback(sampled_out, request_id) for request_id in ids]
    assert [a.status_code for a in answers] == [200] * 10
    assert len(sampled_out.publisher.of_type(FeedbackReceived)) == 10


async def test_a_partial_sample_records_exactly_the_sampled_rows() -> None:
    async for gateway in open_gateway(RecordingPublisher(), record_sample=0.5):
        gateway.serve()
        ids = [i for _ in range(6) for i in await _predict(gateway, 5)]
        policy = RecordPolicy(ttl_s=60, sample=0.5)
        assert set(gateway.records.records) == {i for i in ids if policy.sampled(i)}
        assert 0 < len(gateway.records.records) < len(ids)
        assert len(gateway.publisher.of_type(PredictionLogged)) == len(ids)
        left_out = next(i for i in ids if not policy.sampled(i))
        assert (await _feedback(gateway, left_out)).status_code == 404


async def test_an_unknown_id_in_the_sample_is_named_unknown_with_the_window() -> None:
    async for gateway in open_gateway(RecordingPublisher(), feedback_ttl_s=7200):
        answer = await _feedback(gateway, "nope")
        assert answer.status_code == 404
        message = answer.json()["detail"]["message"]
        assert "unknown, or older than the 2 h feedback window" in message
        assert gateway.metric("feedback_received_total", model_name=MODEL, outcome="unknown")


async def test_a_regressor_outside_experiments_is_sampled_too() -> None:
    async for gateway in open_gateway(
        RecordingPublisher(), specs=registered(SPEND_SPEC), record_sample=0.0
    ):
        gateway.registry.alias_versions = {"champion": "1", "challenger": None}
        await gateway.fleet.load_all()
        served = gateway.fleet.held(SPEND)
        assert served is not None
        champion = LoadedModel(SPEND, "1", spend_pipeline(1), "regression")
        challenger = LoadedModel(SPEND, "2", spend_pipeline(2), "regression")
        served.pool.swap(ServingSnapshot(champion, None, RoutingTable(None, 0.0)))
        body = {"instances": spend_rows(3)}
        alone = await gateway.client.post(f"/v1/models/{SPEND}/predict", json=body)
        served.pool.swap(ServingSnapshot(champion, challenger, RoutingTable("exp-9", 0.5)))
        split = await gateway.client.post(f"/v1/models/{SPEND}/predict", json=body)
        await gateway.drain()
        split_ids = {p["request_id"] for p in split.json()["predictions"]}
        assert set(gateway.records.records) == split_ids
        assert len(gateway.publisher.of_type(PredictionLogged)) == 6
        alone_id = alone.json()["predictions"][0]["request_id"]
        feedback = {"request_id": alone_id, "true_value": 50.0}
        answer = await gateway.client.post(f"/v1/models/{SPEND}/feedback", json=feedback)
        assert answer.status_code == 404
