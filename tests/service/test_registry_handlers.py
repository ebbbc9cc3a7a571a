"""Registry handler and routes through the in-memory broker, with a fake model registry."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import CollectorRegistry

from services.registry.handlers import RegistryHandlers, register
from services.registry.metrics import RegistryMetrics
from services.registry.ports import VersionInfo
from services.registry.routes import versions_router
from shared.errors import NotFoundError
from shared.events import (
    ModelApproved,
    ModelMetrics,
    ModelRejected,
    ModelTrained,
    Topic,
    dead_letter_topic,
)
from shared.testing import RecordingPublisher, consumer_context

MODEL = "customer-segment"


@dataclass
class FakeModelRegistry:
    """Versions, tags and aliases in dicts; knows which runs exist."""

    runs: set[str] = field(default_factory=set)
    versions: dict[str, list[VersionInfo]] = field(default_factory=dict)
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)

    def register(self, name: str, model_uri: str, run_id: str) -> str:
        for v in self.versions.get(name, []):
            if v.run_id == run_id:
                return v.version
        if run_id not in self.runs:
            raise NotFoundError(f"no model at {model_uri}")
        versions = self.versions.setdefault(name, [])
        versions.append(VersionInfo(version=str(len(versions) + 1), run_id=run_id))
        return versions[-1].version

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        self._version(name, version).tags.update(tags)

    def alias_version(self, name: str, alias: str) -> str | None:
        return self.aliases.get(name, {}).get(alias)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases.setdefault(name, {})[alias] = version

    def list_versions(self, name: str) -> list[VersionInfo]:
        if name not in self.versions:
            raise NotFoundError(f"no registered model named {name!r}")
        names = self.aliases.get(name, {})
        return [
            VersionInfo(
                v.version, v.run_id, tuple(a for a, n in names.items() if n == v.version), v.tags
            )
            for v in reversed(self.versions[name])
        ]

    def _version(self, name: str, version: str) -> VersionInfo:
        return next(v for v in self.versions[name] if v.version == version)


@dataclass
class Harness:
    broker: KafkaBroker
    models: FakeModelRegistry
    publisher: RecordingPublisher
    metrics: RegistryMetrics
    dead_letters: list[dict[str, str]]


def _harness() -> Harness:
    broker = KafkaBroker()
    models, publisher = FakeModelRegistry(), RecordingPublisher()
    metrics = RegistryMetrics.create(CollectorRegistry())
    register(
        consumer_context("registry", broker), RegistryHandlers(models, publisher, metrics, 0.6)
    )
    dead: list[dict[str, str]] = []

    @broker.subscriber(dead_letter_topic(Topic.MODEL_TRAINED))
    async def park(message: KafkaMessage) -> None:
        dead.append(dict(message.headers))

    return Harness(broker, models, publisher, metrics, dead)


def _trained(h: Harness, run_id: str, accuracy: float = 0.8) -> ModelTrained:
    h.models.runs.add(run_id)
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
    assert h.metrics.model_versions.labels("approved")._value.get() == 2


async def test_candidate_below_the_accuracy_gate_is_registered_tagged_and_rejected() -> None:
    h = _harness()
    weak = _trained(h, "r1", accuracy=0.41)
    await _send(h, weak)

    [rejected] = h.publisher.of_type(ModelRejected)
    assert isinstance(rejected, ModelRejected)
    assert (rejected.version, rejected.run_id) == ("1", "r1")
    assert rejected.correlation_id == weak.correlation_id
    assert rejected.causation_id == weak.event_id
    assert [(g.name, g.passed) for g in rejected.reasons] == [("accuracy", False)]
    assert "0.4100 < 0.6000" in rejected.reasons[0].detail
    assert h.models.versions[MODEL][0].tags["gate.accuracy"].startswith("failed: ")
    assert h.models.aliases == {}
    assert h.publisher.of_type(ModelApproved) == []
    assert h.metrics.model_versions.labels("rejected")._value.get() == 1
    assert h.metrics.gate_passed.labels("accuracy")._value.get() == 0


async def test_redelivery_after_a_crash_reuses_the_version_and_keeps_champion() -> None:
    h = _harness()
    event = _trained(h, "r1")
    handlers = RegistryHandlers(h.models, h.publisher, h.metrics, 0.6)
    # Calling the handler twice stands in for a crash before the done-marker was written.
    await handlers.on_model_trained(event)
    await handlers.on_model_trained(event)

    assert [v.version for v in h.models.versions[MODEL]] == ["1"]
    assert [e.alias for e in _approved(h)] == ["champion", "champion"]


async def test_unknown_run_is_dead_lettered() -> None:
    h = _harness()
    event = _trained(h, "r1")
    h.models.runs.clear()
    await _send(h, event)

    [headers] = h.dead_letters
    assert headers["x-error-reason"] == "rejected"
    assert h.publisher.events == []


async def test_versions_route_lists_aliases_and_gates() -> None:
    h = _harness()
    await _send(h, _trained(h, "r1"), _trained(h, "r2", accuracy=0.3))
    app = FastAPI()
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
