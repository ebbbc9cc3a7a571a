"""One gateway, many models: each served, validated and counted on its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _gateway_fakes import (
    FRAUD,
    FRAUD_SPEC,
    MODEL,
    SPEC,
    Gateway,
    fraud_rows,
    open_gateway,
    registered,
    rows,
)

from shared.events import FeedbackReceived, ModelRegistered, PredictionLogged, Variant
from shared.testing import RecordingPublisher

SERVING: dict[Variant, str | None] = {"champion": "1", "challenger": None}


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """The default model (customer-segment) and card-fraud, both with champion v1, loaded."""
    async for gw in open_gateway(RecordingPublisher(), specs=registered(FRAUD_SPEC)):
        gw.registry.alias_versions = dict(SERVING)
        await gw.fleet.load_all()
        yield gw


async def _predict(gateway: Gateway, model: str, row: dict[str, Any]) -> Any:
    return await gateway.client.post(f"/v1/models/{model}/predict", json={"features": row})


async def test_each_model_answers_from_its_own_route_with_its_own_classes(
    gateway: Gateway,
) -> None:
    fraud = await _predict(gateway, FRAUD, fraud_rows(1)[0])
    segment = await _predict(gateway, MODEL, rows(1)[0])
    legacy = await gateway.client.post("/v1/predict", json={"features": rows(1)[0]})
    assert (fraud.status_code, segment.status_code, legacy.status_code) == (200, 200, 200)
    assert fraud.json()["model_name"] == FRAUD
    assert set(fraud.json()["predictions"][0]["probabilities"]) == {"legit", "fraud"}
    assert {segment.json()["model_name"], legacy.json()["model_name"]} == {MODEL}
    assert set(segment.json()["predictions"][0]["probabilities"]) == set(SPEC.classes)
    await gateway.drain()
    logged = gateway.publisher.of_type(PredictionLogged)
    assert sorted(e.model_name for e in logged) == sorted([FRAUD, MODEL, MODEL])
    for model, count in ((FRAUD, 1), (MODEL, 2)):
        labels = {"model_name": model, "variant": "champion", "model_version": "1", "status": "200"}
        assert gateway.metric("prediction_requests_total", **labels) == count


async def test_a_row_is_validated_by_the_spec_of_the_model_it_is_sent_to(
    gateway: Gateway,
) -> None:
    mixed = {**fraud_rows(1)[0], "age": 41.0}  # a customer-segment feature
    to_fraud = await _predict(gateway, FRAUD, mixed)
    to_segment = await _predict(gateway, MODEL, fraud_rows(1)[0])
    assert (to_fraud.status_code, to_segment.status_code) == (422, 422)
    fraud_detail = to_fraud.json()["detail"]
    assert "unknown features ['age']" in fraud_detail["errors"][0]
    assert fraud_detail["expected_features"] == list(FRAUD_SPEC.feature_names)
    assert any("'amount'" in e for e in to_segment.json()["detail"]["errors"])
    assert "instances[0].age: missing" in to_segment.json()["detail"]["errors"]
    labels = {"model_name": FRAUD, "variant": "none", "model_version": "none", "status": "422"}
    assert gateway.metric("prediction_requests_total", **labels) == 1


async def test_an_unknown_model_is_a_404_naming_the_known_ones(gateway: Gateway) -> None:
    predicted = await _predict(gateway, "churn", rows(1)[0])
    feedback = await gateway.client.post(
        "/v1/models/churn/feedback", json={"request_id": "r", "true_label": "x"}
    )
    shown = await gateway.client.get("/v1/models/churn")
    for response in (predicted, feedback, shown):
        assert response.status_code == 404, response.text
        assert response.json()["detail"]["message"] == (
            f"unknown model 'churn'; registered models: {FRAUD}, {MODEL}"
        )
    # A made-up name is no label of its own: the metric would grow with every typo.
    labels = {"model_name": "none", "variant": "none", "model_version": "none", "status": "404"}
    assert gateway.metric("prediction_requests_total", **labels) == 1


async def test_models_and_readyz_list_every_model_with_its_variants(gateway: Gateway) -> None:
    listed = (await gateway.client.get("/v1/models")).json()
    assert listed["default_model"] == MODEL
    assert sorted(listed["by_model"]) == [FRAUD, MODEL]
    fraud = listed["by_model"][FRAUD]
    assert fraud["state"] == "serving"
    assert fraud["variants"] == {"champion": {"name": FRAUD, "version": "1"}}
    assert listed["models"] == {"champion": {"name": MODEL, "version": "1"}}  # deprecated
    one = (await gateway.client.get(f"/v1/models/{FRAUD}")).json()
    assert one == fraud
    ready = (await gateway.client.get("/readyz")).json()
    assert ready["by_model"][FRAUD]["variants"]["champion"]["version"] == "1"
    assert gateway.metric("gateway_models_loaded") == 2


async def test_a_model_that_fails_to_load_blocks_neither_the_others_nor_readiness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async for gateway in open_gateway(RecordingPublisher(), specs=registered(FRAUD_SPEC)):
        gateway.registry.alias_versions = dict(SERVING)
        gateway.registry.broken_models.add(FRAUD)
        await gateway.fleet.load_all()
        _dependencies_answer(gateway, monkeypatch)
        ready = await gateway.client.get("/readyz")
        assert ready.status_code == 200, ready.json()
        fraud = ready.json()["by_model"][FRAUD]
        assert fraud["state"] == "failed"
        assert "unreadable" in fraud["error"]
        assert (await _predict(gateway, MODEL, rows(1)[0])).status_code == 200
        unavailable = await _predict(gateway, FRAUD, fraud_rows(1)[0])
        assert unavailable.status_code == 503
        assert unavailable.headers["Retry-After"] == "5"
        labels = {"model_name": FRAUD, "role": "champion"}
        assert gateway.metric("model_load_errors_total", **labels) == 1


async def test_readiness_still_waits_for_the_default_models_champion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async for gateway in open_gateway(RecordingPublisher(), specs=registered(FRAUD_SPEC)):
        gateway.registry.alias_versions = dict(SERVING)
        gateway.registry.broken_models.add(MODEL)
        await gateway.fleet.load_all()
        _dependencies_answer(gateway, monkeypatch)
        unready = await gateway.client.get("/readyz")
        assert unready.status_code == 503
        assert unready.json()["by_model"][FRAUD]["state"] == "serving"  # served meanwhile
        assert (await _predict(gateway, FRAUD, fraud_rows(1)[0])).status_code == 200


async def test_feedback_goes_to_the_route_of_the_model_that_answered(gateway: Gateway) -> None:
    answered = (await _predict(gateway, FRAUD, fraud_rows(1)[0])).json()
    await gateway.drain()
    body = {"request_id": answered["request_id"], "true_label": "fraud"}
    wrong = await gateway.client.post(f"/v1/models/{MODEL}/feedback", json=body)
    legacy = await gateway.client.post("/v1/feedback", json=body)  # the default model's
    for response in (wrong, legacy):
        assert response.status_code == 409, response.text
        message = response.json()["detail"]["message"]
        assert f"answered by model {FRAUD!r}" in message
        assert f"/v1/models/{FRAUD}/feedback" in message
    assert gateway.metric("feedback_received_total", model_name=MODEL, outcome="wrong_model") == 2
    not_a_class = await gateway.client.post(
        f"/v1/models/{FRAUD}/feedback", json={**body, "true_label": "steady"}
    )
    assert not_a_class.status_code == 422
    assert "['legit', 'fraud']" in not_a_class.json()["detail"]["message"]
    right = await gateway.client.post(f"/v1/models/{FRAUD}/feedback", json=body)
    assert right.status_code == 200, right.text
    (received,) = gateway.publisher.of_type(FeedbackReceived)
    assert (received.model_name, received.true_label) == (FRAUD, "fraud")
    assert gateway.metric("feedback_received_total", model_name=FRAUD, outcome="recorded") == 1


def _segment_copies(*names: str) -> list[Any]:
    return [SPEC.model_copy(update={"name": name}) for name in names]


async def test_the_least_recently_used_model_is_unloaded_and_reloaded_on_demand() -> None:
    specs = registered(*_segment_copies("seg-a", "seg-b"))
    async for gateway in open_gateway(RecordingPublisher(), specs, max_loaded_models=2):
        gateway.registry.alias_versions = dict(SERVING)
        assert (await _predict(gateway, "seg-a", rows(1)[0])).status_code == 200
        assert gateway.metric("gateway_models_loaded") == 2
        assert (await _predict(gateway, "seg-b", rows(1)[0])).status_code == 200
        assert gateway.fleet.held("seg-a") is None  # the default model is never the one
        assert gateway.metric("gateway_model_unloads_total", model_name="seg-a") == 1
        assert gateway.metric("gateway_models_loaded") == 2
        listed = (await gateway.client.get("/v1/models")).json()["by_model"]
        assert (listed["seg-a"]["state"], listed["seg-b"]["state"]) == ("unloaded", "serving")
        again = await _predict(gateway, "seg-a", rows(1)[0])
        assert again.status_code == 200  # waited for its reload
        assert [n for n, _ in gateway.registry.loaded].count("seg-a") == 2
        assert gateway.metric("gateway_model_unloads_total", model_name="seg-b") == 1
        assert gateway.fleet.held(MODEL) is not None


async def test_requests_arriving_together_for_an_unloaded_model_share_one_load() -> None:
    specs = registered(*_segment_copies("seg-a"))
    async for gateway in open_gateway(RecordingPublisher(), specs):
        gateway.registry.alias_versions = dict(SERVING)
        answers = await asyncio.gather(*(_predict(gateway, "seg-a", r) for r in rows(4)))
        assert [a.status_code for a in answers] == [200] * 4
        assert gateway.registry.loaded == [("seg-a", "1")]


async def test_a_load_slower_than_the_wait_answers_503_and_serves_once_loaded() -> None:
    specs = registered(*_segment_copies("seg-a"))
    async for gateway in open_gateway(RecordingPublisher(), specs, on_demand_load_timeout_s=0.2):
        gateway.registry.alias_versions = dict(SERVING)
        gateway.registry.slow = slow = threading.Event()
        first = await _predict(gateway, "seg-a", rows(1)[0])
        assert first.status_code == 503
        assert first.headers["Retry-After"] == "5"
        assert "it is loading" in first.json()["detail"]["message"]
        assert (await gateway.client.get("/v1/models/seg-a")).json()["state"] == "loading"
        slow.set()
        served = gateway.fleet.held("seg-a")
        assert served is not None
        assert served.loading is not None
        await served.loading
        assert (await _predict(gateway, "seg-a", rows(1)[0])).status_code == 200


async def test_start_up_waits_for_the_default_model_and_loads_the_others_behind() -> None:
    async for gateway in open_gateway(RecordingPublisher(), specs=registered(FRAUD_SPEC)):
        gateway.registry.alias_versions = dict(SERVING)
        gateway.registry.slow, gateway.registry.slow_models = threading.Event(), {FRAUD}
        await gateway.fleet.load_initial()
        states = {s.name: s.state for s in gateway.fleet.statuses()}
        assert states == {MODEL: "serving", FRAUD: "loading"}
        gateway.registry.slow.set()
        fraud = gateway.fleet.held(FRAUD)
        assert fraud is not None
        assert fraud.loading is not None
        await fraud.loading
        assert fraud.state == "serving"


async def test_a_registered_model_is_learned_and_loaded_in_the_background(
    gateway: Gateway,
) -> None:
    spec = SPEC.model_copy(update={"name": "seg-new"})
    gateway.fleet.register(
        ModelRegistered(producer="registry", model_name="seg-new", spec_revision=1, spec=spec)
    )
    served = gateway.fleet.held("seg-new")
    assert served is not None
    assert served.loading is not None
    await served.loading
    assert (await _predict(gateway, "seg-new", rows(1)[0])).status_code == 200
    document = (await gateway.client.get("/openapi.json")).json()
    assert "/v1/models/seg-new/predict" in document["paths"]
    narrower = spec.model_copy(update={"classes": ("at_risk", "steady", "high_value", "vip")})
    revised = ModelRegistered(
        producer="registry", model_name="seg-new", spec_revision=2, spec=narrower
    )
    gateway.fleet.register(revised)
    assert served.spec.classes[-1] == "vip"  # the spec changed in place, no reload
    stale = revised.model_copy(update={"spec_revision": 1, "spec": spec})
    gateway.fleet.register(stale)
    assert served.spec.classes[-1] == "vip"


def _dependencies_answer(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka and Redis answer and every consumer joined its group: readiness is the models'."""
    runtime = gateway.app.state.runtime
    runtime.broker_started.set()
    for topic in runtime.consumer.health.waiting:
        runtime.consumer.health.assigned(topic)

    async def answers(*_: Any, **__: Any) -> bool:
        return True

    monkeypatch.setattr(runtime.broker, "ping", answers)
    monkeypatch.setattr(runtime.redis, "ping", answers)
