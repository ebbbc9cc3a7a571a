"""Fakes of the gateway's ports and a small real model, for gateway service tests."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from services.gateway.app import GatewayPorts, create_app
from services.gateway.pool import LoadedModel, RoutingTable, ServingSnapshot
from services.gateway.ports import Classifier
from services.gateway.prediction_log import PredictionEventBuffer
from services.gateway.settings import Settings
from shared.datasets import generate_customers
from shared.events import Event, ExperimentUpdated, PredictionLogged, Variant
from shared.messaging import BatchEventPublisher
from shared.spec import load_spec

SPEC = load_spec()


@functools.cache
def trained_pipeline(seed: int = 1) -> Pipeline:
    """The trainer's pipeline shape, fitted on a small generated batch."""
    frame = generate_customers(800, seed=seed)
    pipeline = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("numeric", StandardScaler(), list(SPEC.numeric_features)),
                        (
                            "categorical",
                            OneHotEncoder(handle_unknown="ignore"),
                            list(SPEC.categorical_features),
                        ),
                    ]
                ),
            ),
            ("classifier", LogisticRegression(max_iter=500)),
        ]
    )
    return pipeline.fit(frame[list(SPEC.feature_names)], frame[SPEC.label])


class FakeModelRegistry:
    """Versions that load (or fail to) and aliases, in dicts."""

    def __init__(self, aliases: dict[Variant, str | None] | None = None) -> None:
        self.alias_versions: dict[Variant, str | None] = aliases or {
            "champion": None,
            "challenger": None,
        }
        self.broken: set[str] = set()
        self.unscorable: set[str] = set()
        self.loads: list[str] = []
        self.down = False

    def load(self, name: str, version: str) -> Classifier:
        self.loads.append(version)
        if version in self.broken:
            raise OSError(f"artifact of version {version} unreadable")
        if version in self.unscorable:
            return BrokenModel(raises=True)
        model: Classifier = trained_pipeline(seed=int(version))
        return model

    def aliases(self, name: str) -> dict[Variant, str | None]:
        if self.down:
            raise OSError("MLflow unreachable")
        return dict(self.alias_versions)


class FakeRoutingState:
    """A routing table held in memory."""

    def __init__(self, table: ExperimentUpdated | None = None) -> None:
        self.table = table

    async def latest(self) -> ExperimentUpdated | None:
        return self.table


class InMemoryPredictionRecords:
    """Prediction records and feedback markers in dicts (no TTL)."""

    def __init__(self) -> None:
        self.records: dict[str, PredictionLogged] = {}
        self.claimed: set[str] = set()
        self.recorded: set[str] = set()

    async def remember(self, events: Sequence[PredictionLogged]) -> None:
        for event in events:
            self.records[event.request_id] = event.model_copy(update={"features": {}})

    async def recall(self, request_id: str) -> PredictionLogged | None:
        return self.records.get(request_id)

    async def claim_feedback(self, request_id: str) -> bool:
        if request_id in self.claimed or request_id in self.recorded:
            return False
        self.claimed.add(request_id)
        return True

    async def confirm_feedback(self, request_id: str) -> None:
        self.claimed.discard(request_id)
        self.recorded.add(request_id)

    async def feedback_recorded(self, request_id: str) -> bool:
        return request_id in self.recorded

    async def release_feedback(self, request_id: str) -> None:
        self.claimed.discard(request_id)


class FailingPublisher:
    """A publisher whose broker is down until ``recover`` is called."""

    def __init__(self) -> None:
        self.attempts = 0
        self.down = True
        self.events: list[Event] = []

    def recover(self) -> None:
        self.down = False

    async def publish(self, event: Event) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("kafka is down")
        self.events.append(event)

    async def publish_batch(self, events: Sequence[Event]) -> None:
        for event in events:
            await self.publish(event)


class BrokenModel:
    """A loaded model that fails: it raises, or answers ``nan`` probabilities."""

    def __init__(self, *, raises: bool) -> None:
        self.classes_ = trained_pipeline(1).classes_
        self._raises = raises

    def predict_proba(self, frame: Any) -> Any:
        if self._raises:
            raise ValueError("weights are corrupt")
        return np.full((len(frame), len(self.classes_)), np.nan)


MODEL = "customer-segment"


@dataclass
class Gateway:
    """A gateway app under test, its client and the fakes behind it."""

    app: FastAPI
    client: httpx.AsyncClient
    records: InMemoryPredictionRecords
    publisher: Any
    store: InMemoryFeatureStore
    registry: FakeModelRegistry

    def serve(self, share: float = 0.0) -> None:
        """Swap in a champion (v1) and, when ``share`` > 0, a challenger (v2)."""
        challenger = LoadedModel(MODEL, "2", trained_pipeline(2)) if share else None
        self.app.state.gateway.pool.swap(
            ServingSnapshot(
                champion=LoadedModel(MODEL, "1", trained_pipeline(1)),
                challenger=challenger,
                routing=RoutingTable("exp-1", share),
            )
        )

    async def drain(self) -> None:
        """Publish every queued prediction event now."""
        events: PredictionEventBuffer = self.app.state.prediction_events
        while await events.drain_once():
            pass

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the gateway's metrics registry (0 when never observed)."""
        value = self.app.state.runtime.registry.get_sample_value(name, labels)
        return float(value or 0.0)


class InMemoryFeatureStore:
    """Entity features and written-back segments in dicts."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, str]] = {}
        self.segments: dict[str, tuple[str, str]] = {}

    async def features(self, entity_id: str) -> dict[str, str] | None:
        return self.rows.get(entity_id)

    async def write_segment(self, entity_id: str, segment: str, version: str) -> None:
        self.segments[entity_id] = (segment, version)


async def open_gateway(publisher: BatchEventPublisher, **settings: Any) -> AsyncIterator[Gateway]:
    """A gateway app over in-memory ports, with a client talking to it in-process."""
    records, store, registry = (
        InMemoryPredictionRecords(),
        InMemoryFeatureStore(),
        FakeModelRegistry(),
    )
    ports = GatewayPorts(registry, FakeRoutingState(), records, publisher, store)
    # No lifespan runs under ASGITransport: nothing connects, the buffer is drained by hand.
    app = create_app(Settings(max_batch=5, **settings), ports=ports)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield Gateway(app, client, records, publisher, store, registry)


def rows(n: int) -> list[dict[str, Any]]:
    """``n`` generated customers as request rows (numbers as floats)."""
    frame = generate_customers(n, seed=99)[list(SPEC.feature_names)]
    return [
        {str(k): (v if isinstance(v, str) else float(v)) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]
