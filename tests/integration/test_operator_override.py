"""Operator actions win: a manual rollback during an experiment ends it, under traffic.

Router, gateway and registry run in this process on the session's real Kafka,
Redis and MLflow. The gateway serves an experiment (champion v2, challenger v3
at half the traffic); a person rolls back to v1 through the registry's admin
route; within seconds every prediction is v1's and the experiment reads
``overridden`` with who asked and why. Before the fix the gateway kept the split.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import mlflow
import pytest
from _support import register_champion
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from mlflow.tracking import MlflowClient

from flywheel.infra import Endpoints
from flywheel.loop import EventTap
from services.gateway.app import create_app as gateway_app
from services.gateway.settings import Settings as GatewaySettings
from services.registry.app import create_app as registry_app
from services.registry.settings import Settings as RegistrySettings
from services.router.app import create_app as router_app
from services.router.core import experiment_id_for
from services.router.settings import Settings as RouterSettings
from shared.datasets import generate_customers
from shared.events import ExperimentUpdated, ModelApproved, ModelMetrics
from shared.spec import load_spec

pytestmark = pytest.mark.integration

SPEC = load_spec()
TOKEN = "it-admin-token"
#: One stage at half the traffic, and no verdict however long it runs.
ROUTER = {"ramp_shares": (0.5,), "look_every": 1_000_000, "min_labelled_per_arm": 1_000_000}


def _three_versions(infra: Endpoints, name: str) -> None:
    """Versions 1, 2, 3 of one small model: champion 2 (1 before it), challenger 3."""
    register_champion(infra, name)
    client = MlflowClient(infra.mlflow_uri)
    run_id = client.get_model_version(name, "1").run_id
    for _ in range(2):  # the same model again: only the version numbers matter here
        mlflow.register_model(f"runs:/{run_id}/model", name)
    for alias, version in {"champion": "2", "champion-1": "1", "challenger": "3"}.items():
        client.set_registered_model_alias(name, alias, version)


@asynccontextmanager
async def _serving(app: FastAPI, base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as client,
    ):
        yield client


def _rows(n: int) -> list[dict[str, Any]]:
    frame = generate_customers(n, seed=5)[list(SPEC.feature_names)]
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


async def _served(gateway: httpx.AsyncClient, rows: list[dict[str, Any]]) -> Counter[str]:
    """Which ``variant:version`` answered each row, one request per row."""
    answered: Counter[str] = Counter()
    for row in rows:
        response = await gateway.post("/v1/predict", json={"features": row})
        assert response.status_code == 200, response.text
        body = response.json()
        answered[f"{body['variant']}:{body['model_version']}"] += 1
    return answered


async def _until(check: Any, within_s: float, what: str) -> Any:
    """Poll ``check()`` (a coroutine function) until it returns something truthy."""
    for _ in range(int(within_s / 0.25)):
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.25)
    raise AssertionError(f"not within {within_s} s: {what}")


async def test_a_manual_rollback_ends_the_experiment_and_the_split_within_seconds(
    infra_env: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    infra, name = infra_env, f"it-override-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FLYWHEEL_MODEL_NAME", name)
    monkeypatch.setenv("REGISTRY_ADMIN_TOKEN", TOKEN)
    await asyncio.to_thread(_three_versions, infra, name)
    approval = ModelApproved(
        producer="it",
        model_name=name,
        version="3",
        run_id="r3",
        alias="challenger",
        champion_version="2",
        metrics=ModelMetrics(accuracy=0.9, macro_f1=0.9, validation_rows=10),
    )
    rows, suffix = _rows(100), uuid.uuid4().hex[:8]
    async with AsyncExitStack() as stack:
        tap = await stack.enter_async_context(EventTap(infra.kafka))
        router = await stack.enter_async_context(
            _serving(router_app(RouterSettings(**ROUTER), name=f"router-{suffix}"), "http://r")  # type: ignore[arg-type]
        )
        producer = AIOKafkaProducer(**infra.kafka.client_options())
        await producer.start()
        stack.push_async_callback(producer.stop)
        await producer.send_and_wait(approval.topic.value, approval.model_dump_json().encode())
        await tap.wait_for(
            ExperimentUpdated, lambda e: e.model_name == name and e.status == "running", 60
        )
        gateway = await stack.enter_async_context(
            _serving(gateway_app(GatewaySettings()), "http://g")
        )
        # Positive control: the experiment's split is served before the rollback.
        before = await _until(
            lambda: _split_served(gateway, rows[:40]), 60, "the gateway serving the split"
        )
        registry = await stack.enter_async_context(
            _serving(registry_app(RegistrySettings(), name=f"registry-{suffix}"), "http://reg")
        )
        # Every subscription of the router joined its group (it says so in /readyz), as
        # an operator's router would have long before anyone rolls back.
        await _until(lambda: _ready(router), 60, "the router ready")
        # The gateway's own groups start at the log's end: a rollback sent before they
        # are assigned would reach it only by the periodic resync (15 s), as CI saw.
        await _until(lambda: _subscribed(gateway), 60, "the gateway's subscriptions assigned")
        rollback = await registry.post(
            f"/v1/models/{name}/rollback",
            json={"reason": "complaints from sales", "requested_by": "ana"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert rollback.status_code == 200, rollback.text
        assert rollback.json()["version"] == "1"
        await _until(lambda: _only(gateway, rows[:20], "champion:1"), 10, "v1 alone")
        after = await _served(gateway, rows)

        async def concluded() -> list[dict[str, Any]] | None:
            # The gateway acts on the manual event itself; the router's record follows.
            listed: list[dict[str, Any]] = (await router.get("/v1/experiments")).json()
            mine = [e for e in listed if e["experiment_id"] == experiment_id_for(approval)]
            return listed if mine and mine[0]["status"] != "running" else None

        experiments = await _until(concluded, 10, "the router concluded the experiment")
    assert before["challenger:3"] > 0
    assert before["champion:2"] > 0
    assert after == Counter({"champion:1": 100})
    (state,) = [e for e in experiments if e["experiment_id"] == experiment_id_for(approval)]
    assert state["status"] == "overridden"
    assert state["challenger_share"] == 0.0
    assert state["override"]["requested_by"] == "ana"
    assert state["override"]["reason"] == "complaints from sales"
    assert state["override"]["champion_version"] == "1"
    overridden = [
        e
        for e in tap.events
        if isinstance(e, ExperimentUpdated) and e.model_name == name and e.status == "overridden"
    ]
    assert [(e.champion_version, e.challenger_share, e.requested_by) for e in overridden] == [
        ("1", 0.0, "ana")
    ]


async def _split_served(gateway: httpx.AsyncClient, rows: list[dict[str, Any]]) -> Counter[str]:
    answered = await _served(gateway, rows)
    return answered if len(answered) == 2 else Counter()


async def _ready(service: httpx.AsyncClient) -> bool:
    return (await service.get("/readyz")).status_code == 200


async def _subscribed(service: httpx.AsyncClient) -> bool:
    """Every subscription of ``service`` joined its group (``/readyz`` lists none waiting)."""
    reasons: list[str] = (await service.get("/readyz")).json()["reasons"]
    return not any(r.startswith("waiting for the consumer group") for r in reasons)


async def _only(gateway: httpx.AsyncClient, rows: list[dict[str, Any]], which: str) -> bool:
    return await _served(gateway, rows) == Counter({which: len(rows)})
