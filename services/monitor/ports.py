"""The I/O the monitor needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from services.monitor.core import Reference


class ReferenceStore(Protocol):
    """Finds a model version's training-feature sample."""

    def reference(self, model_name: str, version: str | None = None) -> Reference | None:
        """The sample of ``version`` (the champion when None), or None when there is none."""


class StateStore(Protocol):
    """Keeps the monitor's window state, so a restart neither loses nor repeats a window."""

    async def load(self, model_name: str) -> dict[str, Any] | None:
        """The last saved state, or None."""

    async def unseen(self, model_name: str, event_ids: Sequence[str]) -> set[str]:
        """The ids among ``event_ids`` not yet counted in a saved state."""

    async def save(self, model_name: str, state: dict[str, Any], event_ids: Sequence[str]) -> None:
        """Save ``state`` and mark ``event_ids`` counted, atomically."""
