"""Fakes of the gateway's ports and a small real model, for gateway service tests."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from services.gateway.ports import Classifier
from shared.datasets import generate_customers
from shared.events import Event, ExperimentUpdated, PredictionLogged, Variant
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

    def load(self, name: str, version: str) -> Classifier:
        self.loads.append(version)
        if version in self.broken:
            raise OSError(f"artifact of version {version} unreadable")
        if version in self.unscorable:
            return BrokenModel(raises=True)
        model: Classifier = trained_pipeline(seed=int(version))
        return model

    def aliases(self, name: str) -> dict[Variant, str | None]:
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

    async def remember(self, events: Sequence[PredictionLogged]) -> None:
        for event in events:
            self.records[event.request_id] = event.model_copy(update={"features": {}})

    async def recall(self, request_id: str) -> PredictionLogged | None:
        return self.records.get(request_id)

    async def claim_feedback(self, request_id: str) -> bool:
        if request_id in self.claimed:
            return False
        self.claimed.add(request_id)
        return True

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
