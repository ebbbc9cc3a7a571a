"""The I/O the monitor needs."""

from __future__ import annotations

from typing import Protocol

from services.monitor.core import Reference


class ReferenceStore(Protocol):
    """Finds the current champion's training-feature sample."""

    def champion_reference(self, model_name: str) -> Reference | None:
        """The champion's reference sample, or None while there is no champion."""
