"""Hostile input is the client's error: a 422 naming the field, never a 500 charged to a model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _gateway_fakes import MODEL, Gateway, open_gateway, rows

from shared.events import PredictionFailed, PredictionLogged
from shared.testing import RecordingPublisher


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    async for gw in open_gateway(RecordingPublisher()):
        yield gw


async def _post_raw(gateway: Gateway, path: str, text: str) -> Any:
    return await gateway.client.post(
        path, content=text.encode(), headers={"content-type": "application/json"}
    )


def _row_with_raw_age(age: str) -> str:
    """A request body whose ``age`` is written verbatim (JSON numbers Python cannot hold)."""
    row = {k: v for k, v in rows(1)[0].items() if k != "age"}
    return '{"features": {"age": ' + age + ", " + json.dumps(row)[1:] + "}"


async def _assert_charged_to_nobody(gateway: Gateway) -> None:
    await gateway.drain()
    assert gateway.publisher.of_type(PredictionFailed) == []
    assert gateway.publisher.of_type(PredictionLogged) == []
    for variant in ("champion", "challenger"):
        for version in ("1", "2"):
            labels = {"variant": variant, "model_version": version, "status": "500"}
            assert gateway.metric("prediction_requests_total", model_name=MODEL, **labels) == 0
    labels = {"model_name": MODEL, "variant": "none", "model_version": "none", "status": "422"}
    assert gateway.metric("prediction_requests_total", **labels) == 1


@pytest.mark.parametrize("age", [1e308, -1e308, 151.0, -1.0])
async def test_a_number_outside_the_spec_bounds_is_422_naming_it(
    gateway: Gateway, age: float
) -> None:
    gateway.serve(share=1.0)
    response = await gateway.client.post(
        "/v1/predict", json={"features": {**rows(1)[0], "age": age}}
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]["errors"]
    assert error.startswith("instances[0].age: expected a number in [0, 150]")
    await _assert_charged_to_nobody(gateway)


@pytest.mark.parametrize("age", ["9" * 400, "-" + "9" * 400, "1e309", "NaN", "-Infinity"])
async def test_a_number_that_overflows_or_is_not_finite_is_422_naming_it(
    gateway: Gateway, age: str
) -> None:
    gateway.serve(share=1.0)
    response = await _post_raw(gateway, "/v1/predict", _row_with_raw_age(age))
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]["errors"]
    assert error.startswith("instances[0].age: expected a finite number")
    assert len(error) < 200  # the 400 digits are not echoed back
    await _assert_charged_to_nobody(gateway)


async def test_the_bounds_themselves_are_accepted(gateway: Gateway) -> None:
    gateway.serve()
    edges = [{**rows(1)[0], "age": 0}, {**rows(1)[0], "age": 150, "discount_rate": 1}]
    response = await gateway.client.post("/v1/predict", json={"instances": edges})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("reward", ["NaN", "Infinity", "-Infinity", "1e309"])
async def test_a_reward_that_is_not_finite_is_422_naming_reward(
    gateway: Gateway, reward: str
) -> None:
    gateway.serve()
    predicted = (await gateway.client.post("/v1/predict", json={"features": rows(1)[0]})).json()
    await gateway.drain()
    body = json.dumps({"request_id": predicted["request_id"]})[:-1] + f', "reward": {reward}}}'
    response = await _post_raw(gateway, "/v1/feedback", body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "reward"]
    assert "finite" in error["msg"]
