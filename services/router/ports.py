"""The router's I/O, as protocols."""

from __future__ import annotations

from typing import Protocol

from services.router.core import Experiment
from services.router.core.decision import ExperimentStats
from services.router.core.outcomes import Closing, Label, LabelStatus, OutcomeWindow, PendingOutcome
from services.router.core.report import LookPoint
from shared.events import ExperimentUpdated
from shared.spec import ModelSpec


class ModelSpecs(Protocol):
    """The registered models' specs (the catalog): a regressor's experiments compare a loss."""

    async def spec(self, name: str) -> ModelSpec:
        """``name``'s spec; ``shared.catalog.UnknownModelError`` when it is not registered."""


class ExperimentStore(Protocol):
    """Per model: its current experiment, every experiment it ran, and its routing table."""

    async def current(self, model_name: str) -> Experiment | None:
        """The experiment (or champion-only state) of ``model_name``, if any."""

    async def get(self, model_name: str, experiment_id: str) -> Experiment | None:
        """``model_name``'s experiment with this id, whatever its status."""

    async def find(self, experiment_id: str) -> Experiment | None:
        """The experiment with this id, whichever model ran it."""

    async def all(self, model_name: str | None = None) -> list[Experiment]:
        """Every experiment (of ``model_name`` when given), newest first."""

    async def save(self, experiment: Experiment, update: ExperimentUpdated | None) -> None:
        """Store ``experiment`` and, when given, make ``update`` its model's routing table,
        together."""

    async def routing_table(self, model_name: str) -> ExperimentUpdated | None:
        """``model_name``'s latest published routing table, if any."""


class OutcomeTally(Protocol):
    """Per-experiment sufficient statistics, counted once per event (keyed by model)."""

    async def add(
        self, model_name: str, experiment_id: str, event_id: str, increments: dict[str, float]
    ) -> bool:
        """Add ``increments`` unless ``event_id`` was counted before; True when counted now."""

    async def stats(self, model_name: str, experiment_id: str) -> ExperimentStats:
        """The experiment's statistics so far."""

    async def open_outcome(
        self, model_name: str, experiment_id: str, pending: PendingOutcome
    ) -> bool:
        """Open a prediction's outcome window (once); True when opened now."""

    async def label(
        self, model_name: str, experiment_id: str, request_id: str, label: Label
    ) -> LabelStatus:
        """Keep a label for its open window; ``late`` once the window has closed."""

    async def due(
        self, model_name: str, experiment_id: str, window: OutcomeWindow, now: float
    ) -> Closing:
        """The windows that have closed by ``now`` (seconds since the epoch), with labels."""

    async def close(
        self,
        model_name: str,
        experiment_id: str,
        increments: dict[str, dict[str, float]],
        reward_shift: float | None,
        loss_shift: float | None = None,
    ) -> int:
        """Add each closed window's counters once; how many closed now (-1: retry).

        The shifts the sums were taken around are stored by the first close that
        brings them; -1 when another was stored meanwhile (take it and sum again).
        """

    async def append_look(self, model_name: str, experiment_id: str, point: LookPoint) -> None:
        """Keep one look's summary for the report's plot."""

    async def history(self, model_name: str, experiment_id: str) -> list[LookPoint]:
        """Every kept look, oldest first."""


class ModelAliases(Protocol):
    """Blocking alias moves in the model registry (called in a worker thread); idempotent."""

    def promote(self, model_name: str, version: str, previous: str) -> None:
        """Point ``champion`` at ``version``, keep ``previous`` loadable, drop ``challenger``."""

    def drop_challenger(self, model_name: str, version: str) -> None:
        """Remove the ``challenger`` alias if it still points at ``version``."""
