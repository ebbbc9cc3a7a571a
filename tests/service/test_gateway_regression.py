"""A regression model served beside classifiers: values (and intervals) answered, logged,
remembered for feedback, counted; feedback takes the true value and refuses the other
task's outcome by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pandas as pd
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

from services.gateway.pool import LoadedModel, RoutingTable, ServingSnapshot
from shared.events import FeedbackReceived, PredictionFailed, PredictionLogged, Variant
from shared.testing import RecordingPublisher

SERVING: dict[Variant, str | None] = {"champion": "1", "challenger": None}


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """customer-segment (the default, a classifier) and monthly-spend (a regressor), loaded."""
    async for gw in open_gateway(RecordingPublisher(), specs=registered(SPEND_SPEC)):
        gw.registry.alias_versions = dict(SERVING)
        await gw.fleet.load_all()
        yield gw


class IntervalModel:
    """A regressor offering ``predict_interval``: its value ± 5, or ``nan`` when broken."""

    def __init__(self, broken: bool = False) -> None:
        self._broken = broken

    def predict(self, frame: pd.DataFrame) -> Any:
        if self._broken:
            return np.full(len(frame), np.nan)
        return spend_pipeline(1).predict(frame)

    def predict_interval(self, frame: pd.DataFrame) -> Any:
        values = spend_pipeline(1).predict(frame)
        return np.column_stack([values - 5, values + 5])


def _serve_spend(gateway: Gateway, champion: Any, challenger: Any = None) -> None:
    served = gateway.fleet.held(SPEND)
    assert served is not None
    second = None if challenger is None else LoadedModel(SPEND, "2", challenger, "regression")
    served.pool.swap(
        ServingSnapshot(
            champion=LoadedModel(SPEND, "1", champion, "regression"),
            challenger=second,
            routing=RoutingTable(None, 0.0),
        )
    )


async def _predict(gateway: Gateway, body: dict[str, Any], model: str = SPEND) -> Any:
    return await gateway.client.post(f"/v1/models/{model}/predict", json=body)


def _expected(request_rows: list[dict[str, Any]]) -> list[float]:
    frame = pd.DataFrame(request_rows)[list(SPEND_SPEC.feature_names)]
    return [float(v) for v in spend_pipeline(1).predict(frame)]


async def test_a_regression_model_answers_a_value_for_a_row_and_for_a_batch(
    gateway: Gateway,
) -> None:
    one, batch = spend_rows(1)[0], spend_rows(3)
    single = await _predict(gateway, {"features": one})
    several = await _predict(gateway, {"instances": batch})
    assert (single.status_code, several.status_code) == (200, 200), several.text
    body = single.json()
    assert (body["model_name"], body["model_version"], body["variant"]) == (SPEND, "1", "champion")
    assert set(body["predictions"][0]) == {"request_id", "value"}  # no class, no interval
    assert body["predictions"][0]["value"] == pytest.approx(_expected([one])[0])
    values = [p["value"] for p in several.json()["predictions"]]
    assert values == pytest.approx(_expected(batch))
    await gateway.drain()
    logged = gateway.publisher.of_type(PredictionLogged)
    assert [e.predicted_value for e in logged] == pytest.approx(_expected([one, *batch]))
    assert {(e.predicted_class, e.confidence, e.model_name) for e in logged} == {
        (None, None, SPEND)
    }
    remembered = gateway.records.records[body["request_id"]]  # what feedback is joined to
    assert remembered.predicted_value == pytest.approx(body["predictions"][0]["value"])
    labels = {"model_name": SPEND, "version": "1"}
    assert gateway.metric("ml_predicted_value_count", **labels) == 4
    assert gateway.metric("ml_predicted_value_sum", **labels) == pytest.approx(
        sum(values) + _expected([one])[0]
    )
    assert gateway.metric("ml_prediction_confidence_count", **labels) == 0


async def test_an_interval_is_answered_when_the_model_offers_one(gateway: Gateway) -> None:
    _serve_spend(gateway, IntervalModel())
    answer = await _predict(gateway, {"features": spend_rows(1)[0]})
    assert answer.status_code == 200, answer.text
    predicted = answer.json()["predictions"][0]
    low, high = predicted["interval"]
    assert (low, high) == pytest.approx((predicted["value"] - 5, predicted["value"] + 5))


async def test_a_non_finite_value_is_the_models_failure(gateway: Gateway) -> None:
    _serve_spend(gateway, IntervalModel(broken=True))
    answer = await _predict(gateway, {"features": spend_rows(1)[0]})
    assert answer.status_code == 500, answer.text
    assert "non-finite values" in answer.json()["detail"]["message"]
    await gateway.drain()
    failed = gateway.publisher.of_type(PredictionFailed)
    assert [(e.model_name, e.version, e.variant) for e in failed] == [(SPEND, "1", "champion")]
    assert not gateway.publisher.of_type(PredictionLogged)
    labels = {"model_name": SPEND, "variant": "champion", "model_version": "1", "status": "500"}
    assert gateway.metric("prediction_requests_total", **labels) == 1


async def test_feedback_takes_the_true_value_and_publishes_both_values(gateway: Gateway) -> None:
    answer = (await _predict(gateway, {"features": spend_rows(1)[0]})).json()
    request_id, value = answer["request_id"], answer["predictions"][0]["value"]
    feedback = await gateway.client.post(
        f"/v1/models/{SPEND}/feedback", json={"request_id": request_id, "true_value": 61.5}
    )
    assert feedback.status_code == 200, feedback.text
    assert feedback.json() == {"request_id": request_id, "duplicate": False, "correct": None}
    received = gateway.publisher.of_type(FeedbackReceived)
    assert len(received) == 1
    event = received[0]
    assert (event.model_name, event.version, event.true_value) == (SPEND, "1", 61.5)
    assert event.predicted_value == pytest.approx(value)
    assert (event.predicted_class, event.true_label, event.correct) == (None, None, None)


async def test_an_outcome_of_the_other_task_is_a_422_naming_the_field_and_the_task(
    gateway: Gateway,
) -> None:
    spend = (await _predict(gateway, {"features": spend_rows(1)[0]})).json()["request_id"]
    segment = (await _predict(gateway, {"features": rows(1)[0]}, MODEL)).json()["request_id"]
    label_to_regressor = await gateway.client.post(
        f"/v1/models/{SPEND}/feedback", json={"request_id": spend, "true_label": "steady"}
    )
    value_to_classifier = await gateway.client.post(
        "/v1/feedback", json={"request_id": segment, "true_value": 3.0}
    )
    assert (label_to_regressor.status_code, value_to_classifier.status_code) == (422, 422)
    refused = label_to_regressor.json()["detail"]["message"]
    assert refused.startswith("true_label:")
    assert "regression model" in refused
    assert "true_value" in refused
    refused = value_to_classifier.json()["detail"]["message"]
    assert refused.startswith("true_value:")
    assert "classification model" in refused
    assert "true_label" in refused
    assert not gateway.publisher.of_type(FeedbackReceived)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"request_id": "r", "true_value": NaN}', "true_value"),
        (b'{"request_id": "r", "true_value": Infinity}', "true_value"),
        (b'{"request_id": "r", "true_value": "61.5"}', "true_value"),
        (b'{"request_id": "r", "true_value": 1.0, "reward": 1.0}', "send one of"),
    ],
)
async def test_a_true_value_must_be_one_finite_number(
    gateway: Gateway, body: bytes, named: str
) -> None:
    answer = await gateway.client.post(
        f"/v1/models/{SPEND}/feedback", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert named in answer.text


async def test_a_regression_default_model_answers_on_the_unprefixed_routes() -> None:
    specs = registered(SPEND_SPEC)
    async for gateway in open_gateway(RecordingPublisher(), specs, FLYWHEEL_MODEL_NAME=SPEND):
        gateway.registry.alias_versions = dict(SERVING)
        await gateway.fleet.load_all()
        answer = await gateway.client.post("/v1/predict", json={"features": spend_rows(1)[0]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_name"] == SPEND
        assert answer.json()["predictions"][0]["value"] == pytest.approx(
            _expected(spend_rows(1))[0]
        )
        feedback = await gateway.client.post(
            "/v1/feedback", json={"request_id": answer.json()["request_id"], "true_value": 40.0}
        )
        assert feedback.status_code == 200, feedback.text
        document = (await gateway.client.get("/openapi.json")).json()
        answers = document["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]
        assert answers["application/json"]["schema"]["$ref"].endswith("/ValuePredictResponse")


async def test_the_document_gives_each_model_the_answers_and_outcomes_of_its_task(
    gateway: Gateway,
) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    paths, schemas = document["paths"], document["components"]["schemas"]

    def answer_of(path: str) -> str:
        content = paths[path]["post"]["responses"]["200"]["content"]["application/json"]
        return str(content["schema"]["$ref"]).rsplit("/", 1)[-1]

    assert answer_of(f"/v1/models/{SPEND}/predict") == "ValuePredictResponse"
    assert answer_of(f"/v1/models/{MODEL}/predict") == "PredictResponse"
    assert answer_of("/v1/predict") == "PredictResponse"
    regressor = schemas[f"FeedbackRequest.{SPEND}"]["properties"]
    classifier = schemas["FeedbackRequest"]["properties"]
    assert "true_value" in regressor
    assert "true_label" not in regressor
    assert "true_label" in classifier
    assert "true_value" not in classifier
    assert set(schemas["RowValueOut"]["properties"]) == {"request_id", "value", "interval"}


async def test_a_regression_challenger_in_the_shadow_logs_its_values() -> None:
    async for gateway in open_gateway(
        RecordingPublisher(), registered(SPEND_SPEC), shadow_share=1.0
    ):
        gateway.registry.alias_versions = dict(SERVING)
        await gateway.fleet.load_all()
        _serve_spend(gateway, spend_pipeline(1), spend_pipeline(2))
        row = spend_rows(1)[0]
        answer = await _predict(gateway, {"features": row})
        assert answer.status_code == 200, answer.text
        await gateway.app.state.shadow.drain()
        await gateway.drain()
        shadow = [e for e in gateway.publisher.of_type(PredictionLogged) if e.shadow]
        assert [(e.version, e.variant) for e in shadow] == [("2", "challenger")]
        frame = pd.DataFrame([row])[list(SPEND_SPEC.feature_names)]
        assert shadow[0].predicted_value == pytest.approx(
            float(spend_pipeline(2).predict(frame)[0])
        )
        assert shadow[0].request_id == f"{answer.json()['request_id']}:shadow"
        assert gateway.metric("shadow_predictions_total", model_name=SPEND, outcome="scored") == 1


async def test_an_entity_lookup_writes_the_value_back(gateway: Gateway) -> None:
    gateway.store.rows["c-1"] = {k: str(v) for k, v in spend_rows(1)[0].items()}
    answer = await _predict(gateway, {"entity_id": "c-1"})
    assert answer.status_code == 200, answer.text
    value = answer.json()["predictions"][0]["value"]
    assert gateway.store.model_segments[(SPEND, "c-1")] == (str(value), "1")
