"""Registering models and changing their specs over HTTP, with in-memory stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from _registry_fakes import FakeModelRegistry, FakeSpecStore
from fastapi import FastAPI

from services.registry.routes import models_admin_router, models_router
from services.registry.specs import DEFAULT_REGISTRANT, ModelSpecs
from shared.catalog import ModelCatalog, RegisteredSpec
from shared.events import ModelRegistered
from shared.http_errors import install_error_handlers
from shared.spec import ModelSpec, load_spec
from shared.testing import RecordingPublisher

SPEC = load_spec()
DEFAULT = SPEC.name
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _fraud(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "fraud",
        "label": "is_fraud",
        "classes": ["legit", "fraud"],
        "features": [
            {"name": "amount", "type": "numeric", "min": 0},
            {"name": "channel", "type": "categorical", "categories": ["web", "pos"]},
        ],
    }
    return {**spec, **changes}


@dataclass
class Registry:
    client: httpx.AsyncClient
    store: FakeSpecStore
    models: FakeModelRegistry
    catalog: ModelCatalog
    publisher: RecordingPublisher
    specs: ModelSpecs

    def announced(self) -> list[tuple[str, int]]:
        events = self.publisher.of_type(ModelRegistered)
        return [(e.model_name, e.spec_revision) for e in events if isinstance(e, ModelRegistered)]

    async def create(self, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post("/v1/models", json=body, headers=AUTH)


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    store, models, publisher = FakeSpecStore(), FakeModelRegistry(), RecordingPublisher()
    catalog = ModelCatalog(store, DEFAULT, SPEC)
    specs = ModelSpecs(store, catalog, publisher, (DEFAULT, SPEC), retry_s=0.01)
    app = FastAPI()
    install_error_handlers(app)  # as service_app does
    app.include_router(models_router(models, catalog))
    app.include_router(models_admin_router(specs, TOKEN))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        yield Registry(client, store, models, catalog, publisher, specs)


async def test_a_model_is_created_once_and_the_same_spec_again_changes_nothing(
    registry: Registry,
) -> None:
    body = {"name": "fraud", "spec": _fraud(), "requested_by": "ana"}
    created = await registry.create(body)
    again = await registry.create(body)

    assert created.status_code == 201, created.text
    assert created.json() == {"name": "fraud", "spec_revision": 1, "change": "created"}
    assert again.status_code == 200
    assert again.json() == {"name": "fraud", "spec_revision": 1, "change": "unchanged"}
    assert registry.store.writes == [("fraud", 1, "ana")]
    assert (await registry.catalog.spec("fraud")).classes == ("legit", "fraud")
    [first, repeated] = registry.publisher.of_type(ModelRegistered)
    assert isinstance(first, ModelRegistered)
    assert (first.model_name, first.spec_revision, first.requested_by) == ("fraud", 1, "ana")
    assert first.spec == ModelSpec.model_validate(_fraud())
    assert repeated.model_dump(exclude={"event_id", "occurred_at", "correlation_id"}) == (
        first.model_dump(exclude={"event_id", "occurred_at", "correlation_id"})
    )


async def test_a_compatible_change_is_the_next_revision(registry: Registry) -> None:
    await registry.create({"name": "fraud", "spec": _fraud()})
    wider = _fraud()
    wider["features"] = [
        {"name": "amount", "type": "numeric", "min": -1, "description": "refunds are negative"},
        {"name": "channel", "type": "categorical", "categories": ["web", "pos", "app"]},
    ]
    changed = await registry.create({"name": "fraud", "spec": wider})

    assert changed.status_code == 200, changed.text
    assert changed.json() == {"name": "fraud", "spec_revision": 2, "change": "changed"}
    assert registry.announced() == [("fraud", 1), ("fraud", 2)]
    assert (await registry.catalog.spec("fraud")).feature("channel").categories[-1] == "app"


async def test_an_incompatible_change_is_refused_with_every_reason(registry: Registry) -> None:
    await registry.create({"name": "fraud", "spec": _fraud()})
    broken = _fraud(classes=["fraud", "legit"])
    broken["features"] = [
        {"name": "amount", "type": "categorical", "categories": ["low", "high"]},
        {"name": "channel", "type": "categorical", "categories": ["web"]},
        {"name": "country", "type": "categorical", "categories": ["pt"]},
    ]
    refused = await registry.create({"name": "fraud", "spec": broken})

    assert refused.status_code == 409, refused.text
    assert refused.json()["reasons"] == [
        "classes changed: ['legit', 'fraud'] -> ['fraud', 'legit']",
        "feature 'country' added",
        "feature 'amount' type changed: numeric -> categorical",
        "feature 'channel' categories removed: ['pos']",
    ]
    assert "feature 'country' added" in refused.json()["detail"]
    assert registry.store.writes == [("fraud", 1, "admin")]
    assert registry.announced() == [("fraud", 1)]


async def test_an_invalid_spec_answers_422_naming_the_field(registry: Registry) -> None:
    no_categories = _fraud()
    no_categories["features"] = [{"name": "channel", "type": "categorical"}]
    invalid = await registry.create({"name": "fraud", "spec": no_categories})
    one_class = await registry.create({"name": "fraud", "spec": _fraud(classes=["legit"])})
    other_name = await registry.create({"name": "fraud", "spec": _fraud(name="churn")})

    assert invalid.status_code == 422
    assert "categories are required" in invalid.text
    assert invalid.json()["detail"][0]["loc"][:4] == ["body", "spec", "features", 0]
    assert one_class.status_code == 422
    assert one_class.json()["detail"][0]["loc"] == ["body", "spec", "classes"]
    assert other_name.status_code == 422
    assert "spec.name 'churn' differs from the model name 'fraud'" in other_name.text
    assert registry.store.writes == []


async def test_registering_needs_the_admin_token(registry: Registry) -> None:
    body = {"name": "fraud", "spec": _fraud()}
    missing = await registry.client.post("/v1/models", json=body)
    wrong = await registry.client.post(
        "/v1/models", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert registry.store.writes == []


async def test_models_are_listed_with_revision_and_aliases_and_shown_with_their_spec(
    registry: Registry,
) -> None:
    await registry.create({"name": "fraud", "spec": _fraud()})
    registry.models.versions["fraud"] = []
    registry.models.aliases["fraud"] = {"champion": "3", "challenger": "4"}
    registry.models.versions[DEFAULT] = []  # registered in MLflow before specs were (legacy)

    listed = (await registry.client.get("/v1/models")).json()["models"]
    shown = await registry.client.get("/v1/models/fraud")
    default = await registry.client.get(f"/v1/models/{DEFAULT}")

    assert [(m["name"], m["champion"], m["challenger"]) for m in listed] == [
        (DEFAULT, None, None),
        ("fraud", "3", "4"),
    ]
    assert shown.status_code == 200
    assert shown.json()["spec_revision"] == 1
    assert shown.json()["aliases"] == {"champion": "3", "challenger": "4"}
    assert ModelSpec.model_validate(shown.json()["spec"]) == ModelSpec.model_validate(_fraud())
    # Not registered yet: served from FLYWHEEL_MODEL_SPEC as revision 0 (deprecated).
    assert (default.status_code, default.json()["spec_revision"]) == (200, 0)


async def test_the_unregistered_default_model_is_listed_as_revision_0(registry: Registry) -> None:
    listed = (await registry.client.get("/v1/models")).json()["models"]
    assert [(m["name"], m["spec_revision"]) for m in listed] == [(DEFAULT, 0)]


async def test_an_unknown_model_is_a_404_naming_the_known_ones(registry: Registry) -> None:
    await registry.create({"name": "fraud", "spec": _fraud()})
    missing = await registry.client.get("/v1/models/churn")
    assert missing.status_code == 404
    assert missing.json()["detail"] == (
        f"unknown model 'churn'; registered models: {DEFAULT}, fraud"
    )


async def test_the_default_models_first_registration_must_fit_what_it_serves(
    registry: Registry,
) -> None:
    fewer = SPEC.model_copy(update={"classes": SPEC.classes[:2]})
    refused = await registry.create({"name": DEFAULT, "spec": fewer.model_dump(mode="json")})
    assert refused.status_code == 409
    assert refused.json()["reasons"] == [
        "classes changed: ['at_risk', 'steady', 'high_value'] -> ['at_risk', 'steady']"
    ]


async def test_the_default_model_is_registered_at_start_once_kafka_is_up(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.store.down = True
    kafka_up = asyncio.Event()
    await registry.specs.start(kafka_up)
    await asyncio.sleep(0.05)
    assert registry.store.writes == []  # waits for Kafka
    kafka_up.set()
    await asyncio.sleep(0.05)
    assert registry.store.writes == []  # MLflow down: retried
    registry.store.down = False
    for _ in range(100):
        if registry.store.writes:
            break
        await asyncio.sleep(0.01)
    await registry.specs.stop()

    assert registry.store.writes == [(DEFAULT, 1, DEFAULT_REGISTRANT)]
    assert registry.announced() == [(DEFAULT, 1)]
    assert (await registry.catalog.registered(DEFAULT)).revision == 1
    assert "deprecated" in caplog.text


async def test_a_registered_default_model_is_left_as_it_is(registry: Registry) -> None:
    described = SPEC.model_copy(update={"label": "segment"})
    registry.store.specs[DEFAULT] = RegisteredSpec(4, described)
    ready = asyncio.Event()
    ready.set()
    await registry.specs.start(ready)
    await asyncio.sleep(0.05)
    await registry.specs.stop()
    assert registry.store.writes == []
    assert registry.announced() == []


async def test_a_default_spec_named_otherwise_is_registered_under_the_models_name() -> None:
    store, publisher = FakeSpecStore(), RecordingPublisher()
    catalog = ModelCatalog(store, "churn", SPEC)
    specs = ModelSpecs(store, catalog, publisher, ("churn", SPEC))
    ready = asyncio.Event()
    ready.set()
    await specs.start(ready)
    for _ in range(100):
        if store.writes:
            break
        await asyncio.sleep(0.01)
    await specs.stop()

    assert SPEC.name != "churn"
    assert store.specs["churn"] == RegisteredSpec(1, SPEC.model_copy(update={"name": "churn"}))


async def test_an_unsupported_method_names_every_method_of_the_path(registry: Registry) -> None:
    models = await registry.client.options("/v1/models")
    model = await registry.client.delete("/v1/models/fraud")
    assert (models.status_code, models.headers["Allow"]) == (405, "GET, POST")
    assert (model.status_code, model.headers["Allow"]) == (405, "GET")
