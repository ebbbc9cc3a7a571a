"""The registry's I/O, as protocols: the model registry (MLflow in production)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class VersionInfo:
    """One registered version with its aliases and tags."""

    version: str
    run_id: str | None
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    created_at_ms: int | None = None


class ModelRegistry(Protocol):
    """Registered models, their versions, tags and aliases (blocking calls)."""

    def register(self, name: str, model_uri: str, run_id: str) -> str:
        """Register ``model_uri`` as a version of ``name``, or return the run's existing version."""

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Set tags on one version."""

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points to, or None."""

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``."""

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, newest first (NotFoundError when the model is unknown)."""
