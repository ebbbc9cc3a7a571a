"""Fakes of the gateway's ports and a small real model, for gateway service tests."""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from flywheel.demo_models import generate_transactions
from services.gateway.app import GatewayPorts, create_app
from services.gateway.fleet import ModelFleet
from services.gateway.pool import LoadedModel, RoutingTable, ServingSnapshot
from services.gateway.ports import Classifier, Regressor
from services.gateway.prediction_log import PredictionEventBuffer
from services.gateway.settings import Settings
from shared.catalog import InMemorySpecSource, RegisteredSpec
from shared.datasets import generate_customers
from shared.events import Event, ExperimentUpdated, PredictionLogged, Variant
from shared.messaging import BatchEventPublisher
from shared.spec import ModelSpec, load_spec
from shared.tabular import TabularEncoder

SPEC = load_spec()
#: A second model with other features and classes (the demo's card-fraud).
FRAUD = "card-fraud"
FRAUD_SPEC = ModelSpec.model_validate(
    {
        "name": FRAUD,
        "label": "outcome",
        "classes": ["legit", "fraud"],
        "features": [
            {"name": "amount", "type": "numeric", "min": 0, "max": 1000000},
            {"name": "hour", "type": "numeric", "min": 0, "max": 23},
            {"name": "card_age_days", "type": "numeric", "min": 0},
            {"name": "distance_km", "type": "numeric", "min": 0},
            {"name": "transactions_24h", "type": "numeric", "min": 0},
            {
                "name": "merchant",
                "type": "categorical",
                "categories": ["grocery", "fuel", "travel", "electronics", "restaurant", "online"],
            },
            {
                "name": "channel",
                "type": "categorical",
                "categories": ["chip", "contactless", "online"],
            },
        ],
    }
)


#: A regression model: a customer's monthly spend from the rest of their features.
SPEND = "monthly-spend"
SPEND_SPEC = ModelSpec.model_validate(
    {
        "name": SPEND,
        "label": "monthly_spend",
        "task": "regression",
        "features": [f.model_dump() for f in SPEC.features if f.name != "monthly_spend"],
    }
)


def _pipeline(spec: ModelSpec) -> Pipeline:
    """The trainer's pipeline shape for ``spec``, unfitted."""
    features = ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(spec.numeric_features)),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore"),
                list(spec.categorical_features),
            ),
        ]
    )
    return Pipeline([("features", features), ("classifier", LogisticRegression(max_iter=500))])


@functools.cache
def trained_pipeline(seed: int = 1) -> Pipeline:
    """The trainer's pipeline shape, fitted on a small generated batch."""
    frame = generate_customers(800, seed=seed)
    return _pipeline(SPEC).fit(frame[list(SPEC.feature_names)], frame[SPEC.label])


@functools.cache
def fraud_pipeline(seed: int = 1) -> Pipeline:
    """A card-fraud pipeline, fitted on a small generated batch."""
    frame = generate_transactions(800, seed)
    return _pipeline(FRAUD_SPEC).fit(frame[list(FRAUD_SPEC.feature_names)], frame[FRAUD_SPEC.label])


@functools.cache
def spend_pipeline(seed: int = 1) -> Pipeline:
    """Flywheel's own pipeline shape (a TabularEncoder, then a regressor) for SPEND_SPEC."""
    frame = generate_customers(800, seed=seed)
    encoder = TabularEncoder(SPEND_SPEC.numeric_features, SPEND_SPEC.categorical_features)
    pipeline = Pipeline([("features", encoder), ("regressor", Ridge(alpha=float(seed)))])
    return pipeline.fit(frame[list(SPEND_SPEC.feature_names)], frame[SPEND_SPEC.label])


def spend_rows(n: int) -> list[dict[str, Any]]:
    """``n`` generated customers as rows of SPEND_SPEC (their monthly spend left out)."""
    return [{k: v for k, v in row.items() if k != "monthly_spend"} for row in rows(n)]


class FakeModelRegistry:
    """Versions that load (or fail to) and aliases, per model, in dicts.

    ``alias_versions`` are the default model's (and any model without its own entry in
    ``model_aliases``); card-fraud's versions are fraud pipelines, every other model's
    customer-segment ones.
    """

    def __init__(self, aliases: dict[Variant, str | None] | None = None) -> None:
        self.alias_versions: dict[Variant, str | None] = aliases or {
            "champion": None,
            "challenger": None,
        }
        self.model_aliases: dict[str, dict[Variant, str | None]] = {}
        self.broken: set[str] = set()
        self.broken_models: set[str] = set()
        self.unscorable: set[str] = set()
        self.loads: list[str] = []
        self.loaded: list[tuple[str, str]] = []
        self.down = False
        self.slow: threading.Event | None = None
        """When given, loads wait (in their worker thread) until it is set: a slow MLflow."""
        self.slow_models: set[str] | None = None
        """The models whose loads are slow (None: every model)."""

    def load(self, name: str, version: str, spec: ModelSpec) -> Classifier | Regressor:
        if self.slow is not None and (self.slow_models is None or name in self.slow_models):
            self.slow.wait(timeout=10)
        self.loads.append(version)
        self.loaded.append((name, version))
        if version in self.broken or name in self.broken_models:
            raise OSError(f"artifact of {name} version {version} unreadable")
        if version in self.unscorable:
            return BrokenModel(raises=True)
        if spec.is_regression:
            regressor: Regressor = spend_pipeline(int(version))
            return regressor
        model: Classifier = (
            fraud_pipeline(int(version)) if name == FRAUD else trained_pipeline(int(version))
        )
        return model

    def aliases(self, name: str) -> dict[Variant, str | None]:
        if self.down:
            raise OSError("MLflow unreachable")
        return dict(self.model_aliases.get(name, self.alias_versions))


class FakeRoutingState:
    """Routing tables held in memory, one per model."""

    def __init__(self, table: ExperimentUpdated | None = None) -> None:
        self.tables: dict[str, ExperimentUpdated] = {}
        self.table = table

    @property
    def table(self) -> ExperimentUpdated | None:
        """The latest table set (any model)."""
        return self._last

    @table.setter
    def table(self, table: ExperimentUpdated | None) -> None:
        self._last = table
        if table is None:
            self.tables.clear()
        else:
            self.tables[table.model_name] = table

    async def latest(self, model_name: str) -> ExperimentUpdated | None:
        return self.tables.get(model_name)


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
    specs: InMemorySpecSource
    routing: FakeRoutingState

    @property
    def fleet(self) -> ModelFleet:
        """The gateway's models."""
        fleet: ModelFleet = self.app.state.gateway.fleet
        return fleet

    def serve(self, share: float = 0.0) -> None:
        """Swap in a champion (v1) and, when ``share`` > 0, a challenger (v2)."""
        challenger = LoadedModel(MODEL, "2", trained_pipeline(2)) if share else None
        swap(
            self.app,
            ServingSnapshot(
                champion=LoadedModel(MODEL, "1", trained_pipeline(1)),
                challenger=challenger,
                routing=RoutingTable("exp-1", share),
            ),
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
        self.model_segments: dict[tuple[str, str], tuple[str, str]] = {}

    async def features(self, entity_id: str) -> dict[str, str] | None:
        return self.rows.get(entity_id)

    async def write_segment(
        self, entity_id: str, segment: str, version: str, model_name: str | None = None
    ) -> None:
        if model_name is None:
            self.segments[entity_id] = (segment, version)
        else:
            self.model_segments[(model_name, entity_id)] = (segment, version)


def swap(app: FastAPI, snapshot: ServingSnapshot) -> None:
    """Serve ``snapshot`` as the default model's, as a load would."""
    app.state.gateway.fleet.default.pool.swap(snapshot)


def registered(*specs: ModelSpec) -> InMemorySpecSource:
    """A spec source with each of ``specs`` registered (revision 1) under its name."""
    return InMemorySpecSource({spec.name: RegisteredSpec(1, spec) for spec in specs})


async def open_gateway(
    publisher: BatchEventPublisher, specs: InMemorySpecSource | None = None, **settings: Any
) -> AsyncIterator[Gateway]:
    """A gateway app over in-memory ports, with a client talking to it in-process."""
    records, store, registry = (
        InMemoryPredictionRecords(),
        InMemoryFeatureStore(),
        FakeModelRegistry(),
    )
    specs = specs if specs is not None else InMemorySpecSource()
    routing = FakeRoutingState()
    ports = GatewayPorts(registry, routing, records, publisher, store, specs)
    # No lifespan runs under ASGITransport: nothing connects, the buffer is drained by hand.
    app = create_app(Settings(max_batch=5, **settings), ports=ports)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield Gateway(app, client, records, publisher, store, registry, specs, routing)


def rows(n: int) -> list[dict[str, Any]]:
    """``n`` generated customers as request rows (numbers as floats)."""
    frame = generate_customers(n, seed=99)[list(SPEC.feature_names)]
    return [
        {str(k): (v if isinstance(v, str) else float(v)) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]


def fraud_rows(n: int) -> list[dict[str, Any]]:
    """``n`` generated card transactions as request rows."""
    frame = generate_transactions(n, 99)[list(FRAUD_SPEC.feature_names)]
    return [
        {str(k): (v if isinstance(v, str) else float(v)) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]
