"""The gateway's HTTP API over a real small sklearn pipeline and in-memory ports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pandas as pd
import pytest
from _gateway_fakes import (
    MODEL,
    SPEC,
    BrokenModel,
    FailingPublisher,
    FakeModelRegistry,
    FakeRoutingState,
    Gateway,
    InMemoryFeatureStore,
    InMemoryPredictionRecords,
    open_gateway,
    rows,
    trained_pipeline,
)
from prometheus_client import CollectorRegistry

from services.gateway.app import GatewayPorts, create_app
from services.gateway.metrics import GatewayMetrics
from services.gateway.pool import LoadedModel, RoutingTable, ServingSnapshot
from services.gateway.serving import ServingRefresher
from services.gateway.settings import Settings
from shared.events import ExperimentUpdated, FeedbackReceived, PredictionFailed, PredictionLogged
from shared.testing import RecordingPublisher


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    async for gw in open_gateway(RecordingPublisher()):
        yield gw


async def test_predict_answers_each_row_with_class_confidence_and_probabilities(
    gateway: Gateway,
) -> None:
    gateway.serve()
    response = await gateway.client.post("/v1/predict", json={"features": rows(1)[0]})
    assert response.status_code == 200
    body = response.json()
    assert (body["model_name"], body["model_version"], body["variant"]) == (MODEL, "1", "champion")
    assert body["server_time_ms"] >= 0
    (row,) = body["predictions"]
    assert row["request_id"] == body["request_id"]
    assert row["predicted_class"] in SPEC.classes
    assert row["predicted_class"] == SPEC.classes[row["class_id"]]  # the spec's order
    assert set(row["probabilities"]) == set(SPEC.classes)
    assert sum(row["probabilities"].values()) == pytest.approx(1.0)
    assert row["confidence"] == pytest.approx(max(row["probabilities"].values()))


async def test_batch_rows_get_their_own_ids_and_events_are_logged_after(gateway: Gateway) -> None:
    gateway.serve()
    response = await gateway.client.post("/v1/predict", json={"instances": rows(3)})
    body = response.json()
    ids = [p["request_id"] for p in body["predictions"]]
    assert len(set(ids)) == 3
    assert gateway.publisher.events == []  # nothing published on the request path
    await gateway.drain()
    logged = gateway.publisher.of_type(PredictionLogged)
    assert [e.request_id for e in logged] == ids
    assert {e.correlation_id for e in logged} == {body["request_id"]}
    assert set(gateway.records.records) == set(ids)
    assert (
        gateway.metric(
            "prediction_requests_total",
            model_name=MODEL,
            variant="champion",
            model_version="1",
            status="200",
        )
        == 1
    )


async def test_unknown_feature_is_422_listing_the_expected_ones(gateway: Gateway) -> None:
    gateway.serve()
    row = {**rows(1)[0], "shoe_size": 44}
    response = await gateway.client.post("/v1/predict", json={"instances": [row]})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["expected_features"] == list(SPEC.feature_names)
    assert "shoe_size" in detail["errors"][0]


async def test_wrong_type_is_422_naming_the_field(gateway: Gateway) -> None:
    gateway.serve()
    row = {**rows(1)[0], "monthly_spend": "lots"}
    del row["age"]
    response = await gateway.client.post("/v1/predict", json={"features": row})
    assert response.status_code == 422
    errors = response.json()["detail"]["errors"]
    assert any(e.startswith("instances[0].monthly_spend: expected a number") for e in errors)
    assert "instances[0].age: missing" in errors
    labels = {"model_name": MODEL, "error_type": "FeatureValidationError"}
    assert gateway.metric("ml_prediction_errors_total", **labels) == 1


async def test_batch_beyond_the_limit_is_413(gateway: Gateway) -> None:
    gateway.serve()
    response = await gateway.client.post("/v1/predict", json={"instances": rows(6)})
    assert response.status_code == 413
    assert "at most 5" in response.json()["detail"]["message"]


async def test_both_shapes_at_once_is_422(gateway: Gateway) -> None:
    gateway.serve()
    row = rows(1)[0]
    response = await gateway.client.post("/v1/predict", json={"features": row, "instances": [row]})
    assert response.status_code == 422


async def test_without_a_model_predict_is_503_naming_the_alias(gateway: Gateway) -> None:
    response = await gateway.client.post("/v1/predict", json={"features": rows(1)[0]})
    assert response.status_code == 503
    assert "alias 'champion'" in response.json()["detail"]["message"]
    models = (await gateway.client.get("/v1/models")).json()
    assert models["model_loaded"] is False
    ready = (await gateway.client.get("/readyz")).json()
    assert ready["model_loaded"] is False


async def test_models_and_readyz_name_each_loaded_variant(gateway: Gateway) -> None:
    gateway.serve(share=0.3)
    models = (await gateway.client.get("/v1/models")).json()
    assert models["models"] == {
        "champion": {"name": MODEL, "version": "1"},
        "challenger": {"name": MODEL, "version": "2"},
    }
    assert models["challenger_share"] == pytest.approx(0.3)
    ready = (await gateway.client.get("/readyz")).json()
    assert ready["model_loaded"] is True
    assert ready["models"]["challenger"]["version"] == "2"


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


@pytest.mark.parametrize("path", ["/readyz", "/health"])
async def test_a_gateway_without_its_champion_is_not_ready(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    _dependencies_answer(gateway, monkeypatch)
    unready = await gateway.client.get(path)
    gateway.serve()
    ready = await gateway.client.get(path)
    assert (unready.status_code, ready.status_code) == (503, 200)
    assert (unready.json()["checks"]["model_loaded"], ready.json()["checks"]["model_loaded"]) == (
        False,
        True,
    )


async def test_a_fresh_system_with_no_champion_named_is_ready_and_an_mlflow_outage_is_not(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dependencies_answer(gateway, monkeypatch)
    gateway.registry.down = True
    await gateway.fleet.default.refresher.load_initial()
    outage = await gateway.client.get("/readyz")
    gateway.registry.down = False  # MLflow answers: no model was ever approved
    await gateway.fleet.default.refresher.load_initial()
    fresh = await gateway.client.get("/readyz")
    assert (outage.status_code, fresh.status_code) == (503, 200)
    assert fresh.json()["model_loaded"] is False


async def test_health_is_the_readiness_answer(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dependencies_answer(gateway, monkeypatch)
    gateway.serve(share=0.3)
    health, ready = await gateway.client.get("/health"), await gateway.client.get("/readyz")
    assert (health.status_code, health.json()) == (ready.status_code, ready.json())
    assert health.json()["models"]["challenger"]["version"] == "2"


async def test_an_entity_stays_on_its_variant(gateway: Gateway) -> None:
    gateway.serve(share=0.5)
    seen: dict[str, set[str]] = {}
    for entity in [f"c-{i}" for i in range(20)]:
        for _ in range(3):
            body = {"features": rows(1)[0], "entity_id": entity}
            seen.setdefault(entity, set()).add(
                (await gateway.client.post("/v1/predict", json=body)).json()["variant"]
            )
    assert all(len(variants) == 1 for variants in seen.values())
    assert {v for variants in seen.values() for v in variants} == {"champion", "challenger"}


async def test_feedback_for_an_unknown_request_is_404(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/v1/feedback", json={"request_id": "nope", "true_label": "steady"}
    )
    assert response.status_code == 404
    assert "unknown, or older than" in response.json()["detail"]["message"]


async def test_duplicate_feedback_is_accepted_but_counted_once(gateway: Gateway) -> None:
    gateway.serve()
    predicted = (await gateway.client.post("/v1/predict", json={"features": rows(1)[0]})).json()
    await gateway.drain()
    row = predicted["predictions"][0]
    body = {"request_id": row["request_id"], "true_label": row["predicted_class"]}
    first = await gateway.client.post("/v1/feedback", json=body)
    second = await gateway.client.post("/v1/feedback", json=body)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    (feedback,) = gateway.publisher.of_type(FeedbackReceived)
    (logged,) = gateway.publisher.of_type(PredictionLogged)
    assert feedback.correct is True
    assert (feedback.variant, feedback.version) == ("champion", "1")
    assert feedback.predicted_class == row["predicted_class"]
    assert feedback.correlation_id == logged.correlation_id
    assert feedback.causation_id == logged.event_id


async def test_feedback_with_an_unknown_label_is_422(gateway: Gateway) -> None:
    gateway.serve()
    predicted = (await gateway.client.post("/v1/predict", json={"features": rows(1)[0]})).json()
    await gateway.drain()
    body = {"request_id": predicted["request_id"], "true_label": "platinum"}
    response = await gateway.client.post("/v1/feedback", json=body)
    assert response.status_code == 422
    assert "platinum" in response.json()["detail"]["message"]


async def test_predictions_succeed_while_kafka_is_down_and_their_events_follow_later() -> None:
    async for gateway in open_gateway(FailingPublisher()):
        gateway.serve()
        response = await gateway.client.post("/v1/predict", json={"instances": rows(2)})
        assert response.status_code == 200
        await gateway.drain()
        assert gateway.publisher.attempts >= 1
        assert gateway.metric("prediction_events_retried_total", stage="publish") >= 2
        assert gateway.metric("prediction_events_pending", stage="publish") == 2
        assert gateway.metric("prediction_events_dropped_total", reason="publish_buffer_full") == 0
        # Records still went to the store, so feedback works while Kafka is away.
        assert len(gateway.records.records) == 2
        gateway.publisher.recover()
        await gateway.drain()
        answered = [p["request_id"] for p in response.json()["predictions"]]
        assert [e.request_id for e in gateway.publisher.events] == answered
        assert gateway.metric("prediction_events_pending", stage="publish") == 0


async def test_events_carry_the_experiment_and_split_that_routed_them(gateway: Gateway) -> None:
    gateway.serve(share=0.25)
    body = (await gateway.client.post("/v1/predict", json={"features": rows(1)[0]})).json()
    await gateway.drain()
    (logged,) = [e for e in gateway.publisher.events if isinstance(e, PredictionLogged)]
    assert (logged.experiment_id, logged.challenger_share) == ("exp-1", 0.25)
    # Feedback hours later still names the split of the moment the prediction was routed.
    gateway.serve(share=0.5)
    feedback = {"request_id": body["request_id"], "true_label": "steady"}
    assert (await gateway.client.post("/v1/feedback", json=feedback)).status_code == 200
    (received,) = [e for e in gateway.publisher.events if isinstance(e, FeedbackReceived)]
    assert (received.experiment_id, received.challenger_share) == ("exp-1", 0.25)
    assert received.variant == body["variant"]


async def test_feedback_overtaking_its_queued_prediction_record_still_counts(
    gateway: Gateway,
) -> None:
    gateway.serve()
    body = (await gateway.client.post("/v1/predict", json={"features": rows(1)[0]})).json()
    # Not drained: the prediction's record is still queued, not yet stored.
    assert body["request_id"] not in gateway.records.records
    feedback = {"request_id": body["request_id"], "true_label": "steady"}
    response = await gateway.client.post("/v1/feedback", json=feedback)
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is False


async def test_no_request_fails_while_models_are_swapped_under_load(gateway: Gateway) -> None:
    gateway.serve()
    pool = gateway.fleet.default.pool
    metrics = GatewayMetrics.create(CollectorRegistry())
    refresher = ServingRefresher(
        pool, FakeModelRegistry(), FakeRoutingState(), MODEL, metrics, SPEC
    )

    async def swap_repeatedly() -> list[str]:
        served = []
        for i in range(12):
            champion, challenger = ("1", "2") if i % 2 else ("3", "4")
            await refresher.apply_experiment(
                ExperimentUpdated(
                    producer="test",
                    experiment_id=f"exp-{i}",
                    model_name=MODEL,
                    status="running",
                    champion_version=champion,
                    challenger_version=challenger,
                    challenger_share=0.5,
                )
            )
            champion_now = pool.snapshot.champion
            served.append(champion_now.version if champion_now else "none")
            await asyncio.sleep(0)
        return served

    async def one(i: int) -> httpx.Response:
        # Spread the requests over the swaps' event-loop turns: a request may otherwise
        # run to its answer without yielding once, before or after every swap.
        for _ in range(i % 24):
            await asyncio.sleep(0)
        body = {"features": rows(1)[0], "entity_id": f"c-{i}"}
        return await gateway.client.post("/v1/predict", json=body)

    swapping = asyncio.create_task(swap_repeatedly())
    answers = await asyncio.gather(*(one(i) for i in range(300)))
    swaps = await swapping
    assert swaps[-2:] == ["3", "1"]
    assert [r.status_code for r in answers] == [200] * 300
    versions = {r.json()["model_version"] for r in answers}
    assert len(versions) > 1  # requests really were answered across swaps


async def test_an_entity_alone_is_scored_from_the_feature_store_and_its_segment_written_back(
    gateway: Gateway,
) -> None:
    gateway.serve()
    row = rows(1)[0]
    gateway.store.rows["customer-7"] = {k: str(v) for k, v in row.items()}
    response = await gateway.client.post("/v1/predict", json={"entity_id": "customer-7"})
    assert response.status_code == 200, response.text
    body = response.json()
    direct = await gateway.client.post("/v1/predict", json={"features": row})
    assert body["predictions"][0]["probabilities"] == pytest.approx(
        direct.json()["predictions"][0]["probabilities"]
    )
    assert gateway.store.segments["customer-7"] == (body["predictions"][0]["predicted_class"], "1")
    assert gateway.metric("crm_segment_updates_total", model_name=MODEL, outcome="written") == 1


async def test_an_unknown_entity_without_features_is_a_404_that_says_what_to_do(
    gateway: Gateway,
) -> None:
    gateway.serve()
    response = await gateway.client.post("/v1/predict", json={"entity_id": "nobody"})
    assert response.status_code == 404
    assert "flywheel features load" in response.json()["detail"]["message"]
    empty = await gateway.client.post("/v1/predict", json={})
    assert empty.status_code == 422


@pytest.mark.parametrize(
    ("raises", "error_type"), [(True, "ValueError"), (False, "ModelFailedError")]
)
async def test_a_failing_challenger_answers_500_and_is_charged_with_the_error(
    gateway: Gateway, raises: bool, error_type: str
) -> None:
    champion = LoadedModel(MODEL, "1", trained_pipeline(1))
    broken = LoadedModel(MODEL, "2", BrokenModel(raises=raises))
    routing = RoutingTable("exp-1", 1.0)
    gateway.app.state.gateway.fleet.default.pool.swap(ServingSnapshot(champion, broken, routing))
    response = await gateway.client.post("/v1/predict", json={"instances": rows(3)})
    assert response.status_code == 500
    assert f"model {MODEL} version 2" in response.json()["detail"]["message"]
    await gateway.drain()
    (failed,) = [e for e in gateway.publisher.events if isinstance(e, PredictionFailed)]
    assert (failed.variant, failed.version, failed.rows) == ("challenger", "2", 3)
    assert (failed.experiment_id, failed.challenger_share) == ("exp-1", 1.0)
    assert failed.error_type == error_type
    assert not [e for e in gateway.publisher.events if isinstance(e, PredictionLogged)]
    labels = {"model_name": MODEL, "variant": "challenger", "model_version": "2", "status": "500"}
    assert gateway.metric("prediction_requests_total", **labels) == 1
    assert (
        gateway.metric("ml_prediction_errors_total", model_name=MODEL, error_type=error_type) == 1
    )


async def test_a_body_over_the_cap_is_413_before_it_is_parsed() -> None:
    records, store = InMemoryPredictionRecords(), InMemoryFeatureStore()
    ports = GatewayPorts(
        FakeModelRegistry(), FakeRoutingState(), records, RecordingPublisher(), store
    )
    app = create_app(Settings(max_body_bytes=2048), ports=ports)
    transport = httpx.ASGITransport(app=app)
    padded = {"features": rows(1)[0], "entity_id": "x" * 4096}

    async def chunks() -> AsyncIterator[bytes]:
        body = json.dumps(padded).encode()
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        declared = await client.post("/v1/predict", json=padded)
        chunked = await client.post("/v1/predict", content=chunks())
        small = await client.post("/v1/predict", json={"features": rows(1)[0]})
    for response in (declared, chunked):
        assert response.status_code == 413
        assert "at most 2048 bytes" in response.json()["detail"]["message"]
    assert small.status_code == 503  # under the cap it is parsed (and no model is loaded)


async def test_shadow_traffic_scores_the_challenger_unseen_and_logs_it_apart() -> None:
    async for gateway in open_gateway(RecordingPublisher(), shadow_share=1.0):
        champion = LoadedModel(MODEL, "1", trained_pipeline(1))
        challenger = LoadedModel(MODEL, "2", trained_pipeline(2))
        routing = RoutingTable("exp-1", 0.0)
        gateway.app.state.gateway.fleet.default.pool.swap(
            ServingSnapshot(champion, challenger, routing)
        )
        response = await gateway.client.post("/v1/predict", json={"instances": rows(4)})
        assert response.status_code == 200
        assert (response.json()["variant"], response.json()["model_version"]) == ("champion", "1")
        await gateway.app.state.shadow.drain()
        await gateway.drain()
        logged = [e for e in gateway.publisher.events if isinstance(e, PredictionLogged)]
        served = [e for e in logged if not e.shadow]
        shadows = [e for e in logged if e.shadow]
        assert [(e.variant, e.version) for e in served] == [("champion", "1")] * 4
        assert [(e.variant, e.version) for e in shadows] == [("challenger", "2")] * 4
        assert [e.request_id for e in shadows] == [f"{e.request_id}:shadow" for e in served]
        assert all(e.correlation_id == response.json()["request_id"] for e in shadows)
        # Only the answer the client saw can receive feedback.
        assert set(gateway.records.records) == {e.request_id for e in served}
        agree = gateway.metric("shadow_predictions_total", model_name=MODEL, outcome="agree")
        disagree = gateway.metric("shadow_predictions_total", model_name=MODEL, outcome="disagree")
        assert agree + disagree == 4
        expected = trained_pipeline(2).predict(pd.DataFrame(rows(4))[list(SPEC.feature_names)])
        assert [e.predicted_class for e in shadows] == list(expected)


async def test_without_shadow_share_the_challenger_is_not_mirrored(gateway: Gateway) -> None:
    champion = LoadedModel(MODEL, "1", trained_pipeline(1))
    challenger = LoadedModel(MODEL, "2", trained_pipeline(2))
    gateway.app.state.gateway.fleet.default.pool.swap(
        ServingSnapshot(champion, challenger, RoutingTable("exp-1", 0.0))
    )
    assert (await gateway.client.post("/v1/predict", json={"instances": rows(2)})).is_success
    await gateway.drain()
    logged = [e for e in gateway.publisher.events if isinstance(e, PredictionLogged)]
    assert [e.shadow for e in logged] == [False, False]


def test_openapi_documents_the_predict_answer_and_every_error() -> None:
    ports = GatewayPorts(
        FakeModelRegistry(), FakeRoutingState(), InMemoryPredictionRecords(), RecordingPublisher()
    )
    operation = create_app(Settings(), ports=ports).openapi()["paths"]["/v1/predict"]["post"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/PredictResponse"}
    assert set(operation["responses"]) >= {"200", "413", "422", "500", "503"}


async def test_feedback_claimed_by_a_gateway_killed_before_publishing_is_not_lost(
    gateway: Gateway,
) -> None:
    gateway.serve()
    body = (await gateway.client.post("/v1/predict", json={"features": rows(1)[0]})).json()
    await gateway.drain()
    # Another gateway claimed this feedback and died before publishing it (kill -9).
    await gateway.records.claim_feedback(body["request_id"])
    feedback = {"request_id": body["request_id"], "true_label": "steady"}
    retried = await gateway.client.post("/v1/feedback", json=feedback)
    assert retried.status_code == 503, retried.text  # not "duplicate": nothing was published
    assert not gateway.publisher.of_type(FeedbackReceived)
    await gateway.records.release_feedback(body["request_id"])  # the claim lapses
    again = await gateway.client.post("/v1/feedback", json=feedback)
    assert (again.status_code, again.json()["duplicate"]) == (200, False)
    assert len(gateway.publisher.of_type(FeedbackReceived)) == 1
