"""The I/O the monitor needs, every call about one model."""

from __future__ import annotations

from typing import Any, Protocol

from services.monitor.core import Reference, SavedState
from shared.spec import ModelSpec

__all__ = ["ReferenceStore", "RoutingState", "SavedState", "StateStore"]


class ReferenceStore(Protocol):
    """Finds a model version's training-feature sample (a blocking call)."""

    def reference(
        self, model_name: str, spec: ModelSpec, version: str | None = None
    ) -> Reference | None:
        """The sample of ``version`` (the champion when None), or None when there is none."""


class StateStore(Protocol):
    """Keeps each model's window state, so a restart neither loses nor repeats a window."""

    async def load(self, model_name: str) -> SavedState | None:
        """The last saved state, the open window's row chunks and the pooled windows, or None."""

    async def clear(self, model_name: str) -> None:
        """Forget the saved state (a new reference starts from nothing)."""

    async def save(
        self,
        model_name: str,
        state: dict[str, Any],
        rows: dict[str, Any] | None,
        restart_rows: bool,
        pooled: list[dict[str, Any]],
        keep_pooled: int,
    ) -> None:
        """Save ``state``, append ``rows`` and ``pooled`` (keeping ``keep_pooled``), atomically."""


class RoutingState(Protocol):
    """Whether the router is running an experiment for a model (its routing table)."""

    async def running_experiment(self, model_name: str) -> str | None:
        """The id of the experiment running for ``model_name``, or None."""
