"""Registry handler and routes through the in-memory broker, with a fake model registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx
import numpy as np
import pandas as pd
from _registry_fakes import FakeModelRegistry
from fastapi import FastAPI
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import CollectorRegistry

from services.registry.admin import RegistryAdmin
from services.registry.gates import GatePolicy
from services.registry.handlers import RegistryHandlers, register
from services.registry.metrics import RegistryMetrics
from services.registry.ports import ModelSummary
from services.registry.routes import admin_router, models_router, versions_router
from services.trainer.core import TrainingConfig, train
from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec
from shared.datasets import generate_customers
from shared.errors import DependencyUnavailableError, NotFoundError
from shared.events import (
    ModelApproved,
    ModelMetrics,
    ModelPromoted,
    ModelRegistered,
    ModelRejected,
    ModelRolledBack,
    ModelTrained,
    Topic,
    dead_letter_topic,
)
from shared.http_errors import install_error_handlers
from shared.scoring import EstimatorScorer, Scorer
from shared.spec import ModelSpec, load_spec
from shared.testing import RecordingPublisher, consumer_context

MODEL = "customer-segment"
SPEC = load_spec()
TOKEN = "s3cret"


@cache
def _pipeline(kind: str) -> Any:
    """A real fitted pipeline: "good", or "bad" (trained on shuffled labels)."""
    frame = generate_customers(2000, 3)
    if kind == "bad":
        frame = frame.assign(segment=frame["segment"].sample(frac=1, random_state=1).to_numpy())
    return train(frame, SPEC, TrainingConfig()).pipeline


@cache
def _holdout() -> pd.DataFrame:
    return generate_customers(600, 99)[[*SPEC.feature_names, SPEC.label]]


class NaNModel:
    """A model whose probabilities are NaN."""

    classes_ = np.array(SPEC.classes)

    def predict_proba(self, x: pd.DataFrame) -> Any:
        return np.full((len(x), len(self.classes_)), np.nan)


@dataclass
class FakeLoader:
    """Models by run id; ``models:/name/version`` resolves through the fake registry."""

    registry: FakeModelRegistry
    models: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] | None = field(default_factory=lambda: list(SPEC.feature_names))
    inputs_by_run: dict[str, list[str]] = field(default_factory=dict)
    """The logged signature of a run whose inputs are not ``inputs``."""
    without_holdout: set[str] = field(default_factory=set)

    def load(self, model_uri: str, spec: ModelSpec) -> Scorer:
        # The real scoring of sklearn models: only where they are stored is fake.
        return EstimatorScorer("sklearn", self.sklearn_model(model_uri), spec)

    def sklearn_model(self, model_uri: str) -> Any:
        if model_uri.startswith("models:/"):
            name, version = model_uri.removeprefix("models:/").split("/")
            run_id = self.registry._version(name, version).run_id
            assert run_id is not None
            return self.models[run_id]
        return self.models[model_uri.removeprefix("runs:/").removesuffix("/model")]

    def input_names(self, model_uri: str) -> list[str] | None:
        run_id = model_uri.removeprefix("runs:/").removesuffix("/model")
        return self.inputs_by_run.get(run_id, self.inputs)

    def holdout(self, run_id: str) -> pd.DataFrame:
        if run_id in self.without_holdout:
            raise NotFoundError(f"run {run_id} logged no holdout")
        return _holdout()


@dataclass
class Harness:
    broker: KafkaBroker
    models: FakeModelRegistry
    loader: FakeLoader
    handlers: RegistryHandlers
    publisher: RecordingPublisher
    metrics: RegistryMetrics
    dead_letters: list[dict[str, str]]
    catalog: ModelCatalog
    prometheus: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float | None:
        return self.prometheus.get_sample_value(name, labels)


def _catalog() -> ModelCatalog:
    return ModelCatalog(InMemorySpecSource({MODEL: RegisteredSpec(1, SPEC)}))


def _harness() -> Harness:
    broker = KafkaBroker()
    models, publisher = FakeModelRegistry(), RecordingPublisher()
    loader = FakeLoader(models)
    prometheus = CollectorRegistry()
    metrics = RegistryMetrics.create(prometheus)
    policy = GatePolicy(min_accuracy=0.6, latency_budget_ms=1000.0, latency_samples=20)
    catalog = _catalog()
    handlers = RegistryHandlers(models, loader, catalog, publisher, metrics, policy)
    register(consumer_context("registry", broker), handlers)
    dead: list[dict[str, str]] = []

    @broker.subscriber(dead_letter_topic(Topic.MODEL_TRAINED))
    async def park(message: KafkaMessage) -> None:
        dead.append(dict(message.headers))

    return Harness(broker, models, loader, handlers, publisher, metrics, dead, catalog, prometheus)


def _trained(h: Harness, run_id: str, accuracy: float = 0.8, model: Any = None) -> ModelTrained:
    h.models.runs.add(run_id)
    h.loader.models[run_id] = model if model is not None else _pipeline("good")
    metrics = ModelMetrics(accuracy=accuracy, macro_f1=0.7, log_loss=0.5, validation_rows=400)
    return ModelTrained(
        producer="trainer",
        model_name=MODEL,
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        algorithm="logistic_regression",
        metrics=metrics,
        data_version="d" * 64,
        trigger="data",
    )


def _approved(h: Harness) -> list[ModelApproved]:
    return [e for e in h.publisher.events if isinstance(e, ModelApproved)]


async def _send(h: Harness, *events: ModelTrained) -> None:
    async with TestKafkaBroker(h.broker) as test_broker:
        for event in events:
            await test_broker.publish(event.model_dump_json().encode(), Topic.MODEL_TRAINED.value)


async def test_first_approved_version_becomes_champion_then_challenger() -> None:
    h = _harness()
    first, second = _trained(h, "r1"), _trained(h, "r2", accuracy=0.85)
    await _send(h, first, second)

    approved = _approved(h)
    assert [(e.version, e.alias, e.champion_version) for e in approved] == [
        ("1", "champion", "1"),
        ("2", "challenger", "1"),
    ]
    assert approved[0].correlation_id == first.correlation_id
    assert approved[0].causation_id == first.event_id
    assert approved[1].causation_id == second.event_id
    assert h.models.aliases[MODEL] == {"champion": "1", "challenger": "2"}
    tags = h.models.versions[MODEL][0].tags
    assert tags["gate.accuracy"] == "passed: accuracy 0.8000 ≥ 0.6000"
    assert tags["flywheel.run_id"] == "r1"
    assert tags["flywheel.correlation_id"] == first.correlation_id
    versions = "flywheel_registry_model_versions_total"
    assert h.sample(versions, model_name=MODEL, outcome="approved") == 2
    assert tags["flywheel.spec_revision"] == "1"


async def test_candidate_below_the_accuracy_gate_is_registered_tagged_and_rejected() -> None:
    h = _harness()
    weak = _trained(h, "r1", accuracy=0.41)
    await _send(h, weak)

    [rejected] = h.publisher.of_type(ModelRejected)
    assert isinstance(rejected, ModelRejected)
    assert (rejected.version, rejected.run_id) == ("1", "r1")
    assert rejected.correlation_id == weak.correlation_id
    assert rejected.causation_id == weak.event_id
    assert [g.name for g in rejected.reasons] == ["accuracy"]
    assert "0.4100 < 0.6000" in rejected.reasons[0].detail
    assert h.models.versions[MODEL][0].tags["gate.accuracy"].startswith("failed: ")
    assert h.models.aliases == {}
    assert h.publisher.of_type(ModelApproved) == []
    versions = "flywheel_registry_model_versions_total"
    assert h.sample(versions, model_name=MODEL, outcome="rejected") == 1
    assert h.sample("flywheel_registry_gate_passed", model_name=MODEL, gate="accuracy") == 0


async def test_redelivery_after_a_crash_reuses_the_version_and_keeps_champion() -> None:
    h = _harness()
    event = _trained(h, "r1")
    handlers = h.handlers
    # Calling the handler twice stands in for a crash before the done-marker was written.
    await handlers.on_model_trained(event)
    await handlers.on_model_trained(event)

    assert [v.version for v in h.models.versions[MODEL]] == ["1"]
    assert [e.alias for e in _approved(h)] == ["champion", "champion"]


async def test_a_run_with_no_model_is_rejected_naming_the_uri_not_dead_lettered() -> None:
    h = _harness()
    event = _trained(h, "r1")
    h.models.runs.clear()
    await _send(h, event)

    assert h.dead_letters == []
    [rejected] = h.publisher.of_type(ModelRejected)
    assert isinstance(rejected, ModelRejected)
    assert (rejected.version, rejected.run_id) == (None, "r1")
    [gate] = rejected.reasons
    assert gate.name == "model"
    assert "no model at runs:/r1/model" in gate.detail


async def test_versions_route_lists_aliases_and_gates() -> None:
    h = _harness()
    await _send(h, _trained(h, "r1"), _trained(h, "r2", accuracy=0.3))
    app = FastAPI()
    install_error_handlers(app)  # as service_app does
    app.include_router(versions_router(h.models))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        body = (await client.get(f"/v1/models/{MODEL}/versions")).json()
        missing = await client.get("/v1/models/unknown/versions")
    assert [v["version"] for v in body["versions"]] == ["2", "1"]
    assert body["versions"][1]["aliases"] == ["champion"]
    assert body["versions"][0]["aliases"] == []
    assert body["versions"][0]["gates"]["gate.accuracy"].startswith("failed: ")
    assert missing.status_code == 404
    assert "unknown" in missing.json()["detail"]


async def test_a_worse_candidate_fails_non_inferiority_with_its_numbers() -> None:
    h = _harness()
    await _send(h, _trained(h, "r1"), _trained(h, "r2", model=_pipeline("bad")))

    [rejected] = h.publisher.of_type(ModelRejected)
    assert isinstance(rejected, ModelRejected)
    [gate] = [g for g in rejected.reasons if g.name == "non_inferiority"]
    assert "vs champion v1" in gate.detail
    assert "95% CI [" in gate.detail
    assert "margin 0.0500" in gate.detail
    assert "on 600 fresh holdout rows" in gate.detail
    tags = h.models.versions[MODEL][1].tags
    assert tags["gate.non_inferiority"].startswith("failed: ")
    assert h.models.aliases[MODEL] == {"champion": "1"}


async def test_every_behaviour_gate_is_recorded_on_an_approved_version() -> None:
    h = _harness()
    await _send(h, _trained(h, "r1"), _trained(h, "r2"))
    tags = h.models.versions[MODEL][1].tags
    for gate in ("accuracy", "schema", "finite_output", "determinism", "latency"):
        assert tags[f"gate.{gate}"].startswith("passed: "), gate
    assert "Δ +0.0000" in tags["gate.non_inferiority"]
    assert "p95" in tags["gate.latency"]


async def test_nan_output_a_wrong_schema_and_a_blown_latency_budget_are_each_named() -> None:
    h = _harness()
    h.loader.inputs = ["age", "plan"]
    strict = GatePolicy(latency_budget_ms=1e-6, latency_samples=20)
    h = Harness(
        **{
            **h.__dict__,
            "handlers": RegistryHandlers(
                h.models, h.loader, h.catalog, h.publisher, h.metrics, strict
            ),
        }
    )
    await h.handlers.on_model_trained(_trained(h, "r1", model=NaNModel()))

    [rejected] = h.publisher.of_type(ModelRejected)
    assert isinstance(rejected, ModelRejected)
    names = {g.name for g in rejected.reasons}
    assert {"schema", "finite_output", "latency"} <= names
    detail = {g.name: g.detail for g in rejected.reasons}
    assert "inputs ['age', 'plan']" in detail["schema"]
    assert "NaN/inf" in detail["finite_output"]


def _admin_app(h: Harness) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)  # as service_app does
    app.include_router(models_router(h.models, h.catalog))
    app.include_router(versions_router(h.models))
    app.include_router(admin_router(RegistryAdmin(h.models, h.publisher), TOKEN))
    return app


async def test_promote_and_rollback_move_aliases_and_need_the_token() -> None:
    h = _harness()
    await _send(h, _trained(h, "r1"), _trained(h, "r2"), _trained(h, "r3"))
    transport = httpx.ASGITransport(app=_admin_app(h))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        refused = await client.post(f"/v1/models/{MODEL}/promote", json={})
        wrong = await client.post(
            f"/v1/models/{MODEL}/rollback", json={}, headers={"Authorization": "Bearer x"}
        )
        first = await client.post(f"/v1/models/{MODEL}/promote", json={}, headers=auth)
        second = await client.post(
            f"/v1/models/{MODEL}/promote", json={"version": "2"}, headers=auth
        )
        back = await client.post(
            f"/v1/models/{MODEL}/rollback",
            json={"reason": "complaints", "requested_by": "ana"},
            headers=auth,
        )
        lineage = await client.get(f"/v1/models/{MODEL}/versions/2/lineage")
        listed = await client.get("/v1/models")
    assert (refused.status_code, wrong.status_code) == (401, 401)
    assert first.json()["version"] == "3"  # the challenger, by default
    assert first.json()["previous_champion"] == "1"
    assert second.json()["previous_champion"] == "3"
    assert back.status_code == 200, back.text
    assert (back.json()["version"], back.json()["rolled_back_version"]) == ("3", "2")
    # Who asked travels with the event: the router records it on the experiment it ends.
    assert (back.json()["requested_by"], back.json()["reason"]) == ("ana", "complaints")
    assert first.json()["requested_by"] == "admin"
    assert h.models.aliases[MODEL] == {"champion": "3", "champion-1": "1"}
    kinds = [type(e).__name__ for e in h.publisher.events[-3:]]
    assert kinds == [ModelPromoted.__name__, ModelPromoted.__name__, ModelRolledBack.__name__]
    assert lineage.json()["trigger_event_ids"] == ["e1", "e2"]
    chain = lineage.json()["chain"]
    assert [(link["type"], link["caused_by"]) for link in chain] == [
        ("drift-detected", None),
        ("model-trained", None),
        ("model-approved", chain[1]["event_ids"][0]),
    ]
    assert chain[0]["event_ids"] == ["e1", "e2"]
    [summary] = listed.json()["models"]
    assert (summary["name"], summary["champion"], summary["challenger"]) == (MODEL, "3", None)
    assert lineage.json()["gates"]["gate.schema"].startswith("passed")


async def test_the_bearer_scheme_is_case_insensitive() -> None:
    h = _harness()
    await _send(h, _trained(h, "r1"), _trained(h, "r2"))
    transport = httpx.ASGITransport(app=_admin_app(h))
    path = f"/v1/models/{MODEL}/promote"
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        basic = await client.post(path, json={}, headers={"Authorization": f"Basic {TOKEN}"})
        lower = await client.post(path, json={}, headers={"Authorization": f"bearer {TOKEN}"})
        upper = await client.post(
            path, json={"version": "1"}, headers={"Authorization": f"BEARER {TOKEN}"}
        )
    assert basic.status_code == 401
    assert (lower.status_code, upper.status_code) == (200, 200), lower.text
    assert h.models.aliases[MODEL]["champion"] == "1"


class DownModelRegistry(FakeModelRegistry):
    """A model registry whose store does not answer."""

    def model_summaries(self) -> list[ModelSummary]:
        raise DependencyUnavailableError("MLflow unreachable: connection refused")


async def test_an_unreachable_store_answers_503_with_the_cause() -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(models_router(DownModelRegistry(), _catalog()))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        answer = await client.get("/v1/models")
    assert answer.status_code == 503
    assert answer.json()["detail"] == "MLflow unreachable: connection refused"
    assert answer.headers["Retry-After"]


LITE = SPEC.model_copy(
    update={
        "name": "segment-lite",
        "features": tuple(SPEC.feature(n) for n in ("age", "monthly_spend", "plan")),
    }
)


@cache
def _lite_pipeline() -> Any:
    return train(generate_customers(2000, 3), LITE, TrainingConfig()).pipeline


async def test_each_model_is_gated_against_its_own_spec_and_gets_its_own_champion() -> None:
    h = _harness()
    h.catalog.apply(
        ModelRegistered(producer="registry", model_name=LITE.name, spec_revision=3, spec=LITE)
    )
    lite = _trained(h, "lite-1", model=_lite_pipeline()).model_copy(
        update={"model_name": LITE.name}
    )
    h.loader.inputs_by_run["lite-1"] = list(LITE.feature_names)
    await _send(h, _trained(h, "r1"), lite)

    approved = {e.model_name: (e.version, e.alias) for e in _approved(h)}
    assert approved == {MODEL: ("1", "champion"), LITE.name: ("1", "champion")}
    tags = h.models.versions[LITE.name][0].tags
    assert tags["gate.schema"] == "passed: 3 inputs and 3 classes match the spec"
    assert tags["flywheel.spec_revision"] == "3"
    assert h.models.aliases == {MODEL: {"champion": "1"}, LITE.name: {"champion": "1"}}
    versions = "flywheel_registry_model_versions_total"
    assert h.sample(versions, model_name=LITE.name, outcome="approved") == 1
    assert h.sample(versions, model_name=MODEL, outcome="approved") == 1
    schema = "flywheel_registry_gate_passed"
    assert h.sample(schema, model_name=LITE.name, gate="schema") == 1


async def test_a_candidate_gated_against_another_models_spec_fails_the_schema_gate() -> None:
    h = _harness()
    # The lite pipeline announced as customer-segment: three inputs, not the spec's eight.
    h.loader.inputs_by_run["r1"] = list(LITE.feature_names)
    await _send(h, _trained(h, "r1", model=_lite_pipeline()))

    [rejected] = h.publisher.of_type(ModelRejected)
    assert isinstance(rejected, ModelRejected)
    assert "schema" in {g.name for g in rejected.reasons}


async def test_a_candidate_of_an_unregistered_model_is_dead_lettered_naming_the_known() -> None:
    h = _harness()
    stray = _trained(h, "r1").model_copy(update={"model_name": "fraud"})
    await _send(h, stray)

    [headers] = h.dead_letters
    assert headers["x-error-reason"] == "rejected"
    assert "unknown model 'fraud'" in headers["x-error"]
    assert MODEL in headers["x-error"]
    assert h.publisher.events == []
    assert "fraud" not in h.models.versions


async def test_model_registered_on_the_broker_refreshes_the_catalog() -> None:
    h = _harness()
    assert await h.catalog.spec(MODEL) == SPEC
    described = SPEC.model_copy(
        update={
            "features": (
                SPEC.features[0].model_copy(update={"description": "years"}),
                *SPEC.features[1:],
            )
        }
    )
    event = ModelRegistered(producer="registry", model_name=MODEL, spec_revision=2, spec=described)
    async with TestKafkaBroker(h.broker) as test_broker:
        await test_broker.publish(event.model_dump_json().encode(), Topic.MODEL_REGISTERED.value)

    assert (await h.catalog.registered(MODEL)) == (2, described)
