"""The router's I/O, as protocols."""

from __future__ import annotations

from typing import Protocol

from services.router.core import Experiment
from shared.events import ExperimentUpdated


class ExperimentStore(Protocol):
    """Where the experiment of each model and the published routing table are kept."""

    async def current(self, model_name: str) -> Experiment | None:
        """The experiment (or champion-only state) of ``model_name``, if any."""

    async def save(self, experiment: Experiment, update: ExperimentUpdated) -> None:
        """Store ``experiment`` and make ``update`` the routing table, together."""

    async def routing_table(self) -> ExperimentUpdated | None:
        """The latest published routing table, if any."""
