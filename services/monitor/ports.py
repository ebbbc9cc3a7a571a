"""The I/O the monitor needs."""

from __future__ import annotations

from typing import Any, Protocol

from services.monitor.core import Reference


class ReferenceStore(Protocol):
    """Finds a model version's training-feature sample."""

    def reference(self, model_name: str, version: str | None = None) -> Reference | None:
        """The sample of ``version`` (the champion when None), or None when there is none."""


class StateStore(Protocol):
    """Keeps the monitor's window state, so a restart neither loses nor repeats a window."""

    async def load(self, model_name: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The last saved state and the row chunks of the open window, or None."""

    async def save(
        self,
        model_name: str,
        state: dict[str, Any],
        rows: dict[str, Any] | None,
        restart_rows: bool,
    ) -> None:
        """Save ``state`` and append ``rows`` (after dropping saved rows if asked), atomically."""
