"""`flywheel demo` on a used stack: start from the serving champion, open no new experiment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import flywheel.demo as demo
from flywheel.demo import (
    DemoConfig,
    ExperimentStillRunningError,
    LoopRun,
    ModelLoop,
    Steps,
    config_for_stack,
    first_model,
    refuse_a_running_experiment,
)
from flywheel.demo_models import demo_models
from flywheel.gateway_client import ModelGateway
from shared.events import DatasetRef, ExperimentUpdated

SEGMENT = demo_models()[0]
#: These steps read no events: a first model on a used stack, or one stopped at its announcement.
NO_TAP: Any = None


def _table(status: str, champion: str = "3", challenger: str | None = None) -> ExperimentUpdated:
    return ExperimentUpdated(
        producer="router",
        experiment_id="e7a1c0de-0000-4000-8000-000000000000",
        model_name="customer-segment",
        status=status,
        champion_version=champion,
        challenger_version=challenger,
        challenger_share=0.05 if status == "running" else 0.0,
    )


def _config(tmp_path: Path) -> DemoConfig:
    return DemoConfig(
        kafka_bootstrap="127.0.0.1:1",
        gateway_url="http://gateway",
        data_dir=tmp_path,
        normal_requests=3,
        router_url="http://router",
    )


def _gateway(champion: str) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/models/{SEGMENT.name}":
            return httpx.Response(200, json={"variants": {"champion": {"version": champion}}})
        assert request.url.path == f"/v1/models/{SEGMENT.name}/predict"
        rows = json.loads(request.content)["instances"]
        prediction = {"predicted_class": "steady", "confidence": 0.7, "request_id": "r"}
        body: dict[str, Any] = {
            "model_version": champion,
            "variant": "champion",
            "predictions": [prediction] * len(rows),
        }
        return httpx.Response(200, json=body)

    return httpx.MockTransport(answer)


async def test_a_used_stack_starts_from_its_champion_without_a_new_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_announcement(*_: object) -> None:
        raise AssertionError("a first batch on a used stack opens an experiment")

    monkeypatch.setattr(demo, "announce", no_announcement)
    lines: list[str] = []
    run, table = LoopRun(), _table("promoted", champion="3", challenger="3")
    async with httpx.AsyncClient(transport=_gateway("3"), base_url="http://gateway") as client:
        gateway = ModelGateway(client, SEGMENT.name)
        loop = ModelLoop(_config(tmp_path), SEGMENT, NO_TAP, gateway, Steps(lines.append), run)
        await first_model(loop, table)
    assert run.announced is None
    assert run.started_from == table
    assert run.first_prediction["model_version"] == "3"
    assert "version 3 serves as champion" in lines[0]


async def test_a_fresh_stack_announces_its_first_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    announced: list[DatasetRef] = []

    async def record(_: object, ref: DatasetRef, *, model_name: str) -> None:
        assert model_name == SEGMENT.name
        announced.append(ref)
        raise RuntimeError("stop after the announcement")

    monkeypatch.setattr(demo, "announce", record)
    async with httpx.AsyncClient(transport=_gateway("1"), base_url="http://gateway") as client:
        gateway = ModelGateway(client, SEGMENT.name)
        loop = ModelLoop(_config(tmp_path), SEGMENT, NO_TAP, gateway, Steps(print), LoopRun())
        with pytest.raises(RuntimeError, match="stop after"):
            await first_model(loop, None)
    assert [ref.rows for ref in announced] == [4000]


def test_a_running_experiment_stops_the_demo_at_once_with_what_to_do() -> None:
    refuse_a_running_experiment(None)
    refuse_a_running_experiment(_table("champion_only"))
    with pytest.raises(ExperimentStillRunningError) as error:
        refuse_a_running_experiment(_table("running", champion="1", challenger="2"))
    message = str(error.value)
    assert "e7a1c0de" in message
    assert "flywheel promote customer-segment 1" in message
    assert "drift" in message


def test_a_rerun_generates_new_data_so_the_trainer_does_not_skip_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config_for_stack(config, None) == config
    first = config_for_stack(config, _table("promoted", champion="3"))
    second = config_for_stack(config, _table("promoted", champion="5"))
    assert len({config.seed, first.seed, second.seed}) == 3
