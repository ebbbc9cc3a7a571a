"""The gateway's I/O, as protocols."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from shared.events import ExperimentUpdated, PredictionLogged, Variant
from shared.spec import ModelSpec


class Classifier(Protocol):
    """What the gateway needs of a model: class labels and probabilities."""

    classes_: Any

    def predict_proba(self, frame: Any) -> np.ndarray:
        """Class probabilities, one row per input row."""
        ...


class Regressor(Protocol):
    """What the gateway needs of a regression model: one value per row.

    A model may also offer ``predict_interval(frame)``: ``[low, high]`` per row.
    """

    def predict(self, frame: Any) -> np.ndarray:
        """One predicted value per input row."""
        ...


class ModelRegistry(Protocol):
    """Blocking access to registered models (called in a worker thread)."""

    def load(self, name: str, version: str, spec: ModelSpec) -> Classifier | Regressor:
        """Load version ``version`` of model ``name``, to answer in ``spec``'s terms."""
        ...

    def aliases(self, name: str) -> dict[Variant, str | None]:
        """The versions the ``champion`` and ``challenger`` aliases point at (None if unset)."""
        ...


class RoutingStateSource(Protocol):
    """Where the router leaves each model's latest routing table (``shared.routing``)."""

    async def latest(self, model_name: str) -> ExperimentUpdated | None:
        """``model_name``'s routing table, or None when it has none.

        Raises DependencyUnavailableError when the table cannot be read.
        """


class PredictionRecords(Protocol):
    """What the gateway remembers of each prediction until its feedback arrives."""

    async def remember(self, events: Sequence[PredictionLogged]) -> None:
        """Keep a feedback record of each logged prediction."""

    async def recall(self, request_id: str) -> PredictionLogged | None:
        """The logged prediction of ``request_id`` (features omitted), if still kept."""

    async def claim_feedback(self, request_id: str) -> bool:
        """Claim publishing feedback for ``request_id``; False when claimed or recorded already.

        A claim not confirmed lapses after a short hold: its gateway may have died
        between claiming and publishing, and the client's retry must then count.
        """

    async def confirm_feedback(self, request_id: str) -> None:
        """Mark the claimed feedback as published, for the whole feedback window."""

    async def feedback_recorded(self, request_id: str) -> bool:
        """Whether feedback for ``request_id`` was published (not merely claimed)."""

    async def release_feedback(self, request_id: str) -> None:
        """Undo ``claim_feedback`` when recording the feedback failed."""


class FeatureStore(Protocol):
    """The online feature store: each entity's features, and its latest predicted segment."""

    async def features(self, entity_id: str) -> dict[str, str] | None:
        """The stored features of ``entity_id`` (as strings), or None when unknown."""

    async def write_segment(
        self, entity_id: str, segment: str, version: str, model_name: str | None = None
    ) -> None:
        """Record the class a model version predicted for ``entity_id`` (the segment when
        ``model_name`` is None: the default model's)."""
