"""The registry's I/O, as protocols: the model registry and the specs (MLflow in production)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from shared.catalog import RegisteredSpec, SpecSource
from shared.spec import ModelSpec

if TYPE_CHECKING:
    import pandas as pd

    from shared.scoring import Scorer


@dataclass(frozen=True)
class VersionInfo:
    """One registered version with its aliases and tags."""

    version: str
    run_id: str | None
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    created_at_ms: int | None = None


@dataclass(frozen=True)
class ModelSummary:
    """One registered model and its aliases."""

    name: str
    aliases: dict[str, str] = field(default_factory=dict)


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

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` (no error when it does not exist)."""

    def all_aliases(self, name: str) -> dict[str, str]:
        """Every alias of ``name`` and the version it points to (empty when unknown)."""

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, newest first (NotFoundError when the model is unknown)."""

    def list_models(self) -> list[str]:
        """Names of every registered model, sorted."""

    def model_summaries(self) -> list[ModelSummary]:
        """Every registered model with its aliases, sorted by name."""

    def run_tags(self, run_id: str) -> dict[str, str]:
        """The tags of the training run (NotFoundError when it does not exist)."""


class SpecStore(SpecSource, Protocol):
    """Where specs are read and written (``shared.mlflow_specs.MlflowSpecSource``; blocking)."""

    def register(self, name: str, spec: ModelSpec, requested_by: str) -> RegisteredSpec:
        """Store ``spec`` as ``name``'s next revision, creating the model if new."""


class CandidateLoader(Protocol):
    """Loads logged models, of any flavour, and their fresh holdouts (blocking calls)."""

    def load(self, model_uri: str, spec: ModelSpec) -> Scorer:
        """The model at ``model_uri`` answering for ``spec`` (``shared.scoring.load_scorer``;
        UnusableModelError naming the flavour's problem when it cannot)."""

    def sklearn_model(self, model_uri: str) -> Any:
        """The sklearn estimator at ``model_uri`` itself (to package it for BentoML)."""

    def input_names(self, model_uri: str) -> list[str] | None:
        """Column names of the model's logged input signature, or None without one."""

    def holdout(self, run_id: str) -> pd.DataFrame:
        """The run's held-out rows with labels (NotFoundError when it logged none)."""


class ModelPackager(Protocol):
    """Packages approved versions for another serving stack (BentoML; blocking)."""

    def package(self, name: str, version: str, model: Any, metadata: dict[str, Any]) -> str:
        """Store ``model`` for ``name`` version ``version``; return its tag there."""
