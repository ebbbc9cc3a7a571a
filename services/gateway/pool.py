"""The models the gateway serves, as one immutable snapshot swapped whole."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, cast

import numpy as np

from services.gateway.core import RowScorer, example_row, frame_of, row_scorer
from services.gateway.ports import Classifier, Regressor
from shared.events import Variant
from shared.spec import ModelSpec, Task


@dataclass(frozen=True)
class LoadedModel:
    """A model version in memory, ready to score: a classifier's probabilities, or a
    regressor's values (its ``task``, fixed when it is loaded)."""

    name: str
    version: str
    model: Classifier | Regressor = field(compare=False, repr=False)
    task: Task = "classification"

    @cached_property
    def classes(self) -> tuple[str, ...]:
        """Class labels in the order of ``predict_proba``'s columns."""
        return tuple(str(c) for c in cast(Classifier, self.model).classes_)

    @cached_property
    def _row_scorer(self) -> RowScorer | None:
        return row_scorer(self.model)

    @cached_property
    def _row_valuer(self) -> RowScorer | None:
        return row_scorer(self.model, "predict")

    @cached_property
    def _row_interval(self) -> RowScorer | None:
        return row_scorer(self.model, "predict_interval")

    def warm_up(self, spec: ModelSpec, times: int = 50) -> None:
        """Score an example row a few times, so served traffic never pays first-call costs
        (lazy initialisation, caches); a model that cannot score it raises here."""
        rows = [example_row(spec)]
        for _ in range(times):
            if self.task == "regression":
                self.predict_values(rows, spec)
                self.predict_intervals(rows, spec)
            else:
                self.predict_proba(rows, spec)

    def predict_proba(self, rows: Sequence[Mapping[str, Any]], spec: ModelSpec) -> np.ndarray:
        """Class probabilities of checked rows: straight from the rows where the model
        allows it (the same numbers), through a DataFrame otherwise."""
        if self._row_scorer is not None:
            return self._row_scorer(rows)
        return np.asarray(cast(Classifier, self.model).predict_proba(frame_of(rows, spec)))

    def predict_values(self, rows: Sequence[Mapping[str, Any]], spec: ModelSpec) -> np.ndarray:
        """A regressor's values for checked rows (as floats), from the rows where it can."""
        if self._row_valuer is not None:
            return np.asarray(self._row_valuer(rows), dtype=float)
        return np.asarray(cast(Regressor, self.model).predict(frame_of(rows, spec)), dtype=float)

    def predict_intervals(
        self, rows: Sequence[Mapping[str, Any]], spec: ModelSpec
    ) -> np.ndarray | None:
        """``[low, high]`` per row where the model offers ``predict_interval``; else None."""
        if self._row_interval is not None:
            return np.asarray(self._row_interval(rows), dtype=float)
        interval = getattr(self.model, "predict_interval", None)
        if interval is None:
            return None
        return np.asarray(interval(frame_of(rows, spec)), dtype=float)


@dataclass(frozen=True)
class RoutingTable:
    """Which experiment is running and how much traffic its challenger gets."""

    experiment_id: str | None = None
    challenger_share: float = 0.0


@dataclass(frozen=True)
class ServingSnapshot:
    """Everything a request reads, captured at once so a swap never mixes two tables."""

    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None
    routing: RoutingTable = RoutingTable()

    def model_for(self, variant: Variant) -> LoadedModel | None:
        """The model serving ``variant``, if loaded."""
        return self.champion if variant == "champion" else self.challenger

    def loaded_version(self, version: str) -> LoadedModel | None:
        """A loaded model of ``version`` in either role, to reuse it rather than reload."""
        for model in (self.champion, self.challenger):
            if model is not None and model.version == version:
                return model
        return None

    def with_routing(self, routing: RoutingTable) -> ServingSnapshot:
        """The same models under another routing table."""
        return replace(self, routing=routing)

    def describe(self) -> dict[str, dict[str, str]]:
        """Name and version per loaded variant."""
        loaded = {"champion": self.champion, "challenger": self.challenger}
        return {v: {"name": m.name, "version": m.version} for v, m in loaded.items() if m}


class ModelPool:
    """Holds the current snapshot; readers take it once per request, writers replace it."""

    def __init__(self, snapshot: ServingSnapshot | None = None) -> None:
        self._snapshot = snapshot or ServingSnapshot()

    @property
    def snapshot(self) -> ServingSnapshot:
        """The snapshot serving now."""
        return self._snapshot

    def swap(self, snapshot: ServingSnapshot) -> None:
        """Serve ``snapshot`` from the next request on (one reference assignment: atomic)."""
        self._snapshot = snapshot
