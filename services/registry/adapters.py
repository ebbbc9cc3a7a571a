"""The registry's port on MLflow's model registry."""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)

from services.registry.importing import MODEL_ARTIFACT, Evaluation, ImportRecord, import_tags
from services.registry.ports import ModelSummary, VersionInfo
from shared.errors import InvalidInputError, NotFoundError
from shared.mlflow_client import bound_mlflow_requests, mlflow_client, mlflow_outages
from shared.scoring import Scorer, load_scorer
from shared.spec import ModelSpec

log = logging.getLogger(__name__)


P = ParamSpec("P")
R = TypeVar("R")


def _outages_retried(method: Callable[P, R]) -> Callable[P, R]:
    """Decorator form of ``mlflow_outages``."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with mlflow_outages():
            return method(*args, **kwargs)

    return wrapper


class MlflowModelRegistry:
    """Versions, tags and aliases in MLflow's model registry."""

    def __init__(self, tracking_uri: str) -> None:
        mlflow.set_tracking_uri(tracking_uri)
        self._client = mlflow_client(tracking_uri)

    @_outages_retried
    def register(self, name: str, model_uri: str, run_id: str) -> str:
        """Register ``model_uri`` as a version of ``name``, or return the run's existing version."""
        # A redelivery after a crash between register and publish must not add a twin version.
        existing = self._search(f"name='{_quoted(name)}' and run_id='{_quoted(run_id)}'")
        if existing:
            return str(existing[0].version)
        try:
            version = mlflow.register_model(model_uri, name)
        except MlflowException as error:
            if _missing(error):
                raise NotFoundError(f"no model at {model_uri}: {error.message}") from error
            raise
        log.info("version registered", extra={"model": name, "version": version.version})
        return str(version.version)

    @_outages_retried
    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Set tags on one version."""
        for key, value in tags.items():
            self._client.set_model_version_tag(name, version, key, value)

    @_outages_retried
    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points to, or None."""
        try:
            aliases: dict[str, Any] = self._client.get_registered_model(name).aliases
        except MlflowException as error:
            if _missing(error):
                return None
            raise
        version = aliases.get(alias)
        return None if version is None else str(version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``."""
        with mlflow_outages():
            self._client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias``; one that does not exist is fine."""
        try:
            with mlflow_outages():
                self._client.delete_registered_model_alias(name, alias)
        except MlflowException as error:
            if not _missing(error):
                raise

    def all_aliases(self, name: str) -> dict[str, str]:
        """Every alias of ``name`` and its version (empty when the model is unknown)."""
        try:
            with mlflow_outages():
                found: dict[str, Any] = self._client.get_registered_model(name).aliases
        except MlflowException as error:
            if _missing(error):
                return {}
            raise
        return {alias: str(version) for alias, version in found.items()}

    @_outages_retried
    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, newest first (NotFoundError when the model is unknown)."""
        try:
            aliases: dict[str, Any] = self._client.get_registered_model(name).aliases
        except MlflowException as error:
            # A name MLflow refuses (a ':' or '/' in it) names no model either: a 404, not a 500.
            if _missing(error) or error.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE):
                raise NotFoundError(f"no registered model named {name!r}") from error
            raise
        # search_model_versions leaves aliases out; the registered model has them all.
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        found = self._search(f"name='{_quoted(name)}'")
        versions = [_info(v, by_version.get(str(v.version), [])) for v in found]
        return sorted(versions, key=lambda v: int(v.version), reverse=True)

    @_outages_retried
    def list_models(self) -> list[str]:
        """Names of every registered model, sorted."""
        return sorted(str(m.name) for m in self._client.search_registered_models())

    def model_summaries(self) -> list[ModelSummary]:
        """Every registered model with its aliases, a page at a time."""
        found: list[ModelSummary] = []
        token: str | None = None
        while True:
            with mlflow_outages():
                page = self._client.search_registered_models(max_results=100, page_token=token)
            found += [_summary(model) for model in page]
            token = page.token
            if not token:
                return sorted(found, key=lambda m: m.name)

    @_outages_retried
    def run_tags(self, run_id: str) -> dict[str, str]:
        """The training run's tags."""
        try:
            return dict(self._client.get_run(run_id).data.tags)
        except MlflowException as error:
            if _missing(error):
                raise NotFoundError(f"no run {run_id}") from error
            raise

    def _search(self, filter_string: str) -> list[Any]:
        return list(self._client.search_model_versions(filter_string))


class MlflowCandidateLoader:
    """Loads logged models of any flavour and the holdout their run logged."""

    def __init__(self, tracking_uri: str) -> None:
        bound_mlflow_requests()
        mlflow.set_tracking_uri(tracking_uri)
        self._tracking_uri = tracking_uri

    def load(self, model_uri: str, spec: ModelSpec) -> Scorer:
        """The model at ``model_uri``, in its most specific flavour, answering for ``spec``."""
        return load_scorer(model_uri, spec)

    def sklearn_model(self, model_uri: str) -> Any:
        """The sklearn pipeline at ``model_uri`` (NotFoundError when there is none)."""
        try:
            with mlflow_outages():
                return mlflow.sklearn.load_model(model_uri)
        except MlflowException as error:
            if _missing(error):
                raise NotFoundError(f"no model at {model_uri}: {error.message}") from error
            raise

    def input_names(self, model_uri: str) -> list[str] | None:
        """Input column names of the logged signature."""
        with mlflow_outages():
            signature = mlflow.models.get_model_info(model_uri).signature
        if signature is None or signature.inputs is None:
            return None
        return [str(name) for name in signature.inputs.input_names()]

    def holdout(self, run_id: str) -> pd.DataFrame:
        """The run's ``holdout/validation.parquet``."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                with mlflow_outages():
                    path = mlflow.artifacts.download_artifacts(
                        run_id=run_id,
                        artifact_path="holdout/validation.parquet",
                        dst_path=tmp,
                        tracking_uri=self._tracking_uri,
                    )
            except (MlflowException, OSError) as error:
                if isinstance(error, MlflowException) and not _missing(error):
                    raise
                raise NotFoundError(f"run {run_id} logged no holdout: {error}") from error
            return pd.read_parquet(path)


def _quoted(value: str) -> str:
    # MLflow's filter grammar has no escape for quotes; refuse rather than mis-filter.
    if "'" in value:
        raise InvalidInputError(f"quote in name {value!r}")
    return value


def _missing(error: MlflowException) -> bool:
    return bool(error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST))


def _summary(model: Any) -> ModelSummary:
    aliases = {str(alias): str(version) for alias, version in (model.aliases or {}).items()}
    return ModelSummary(str(model.name), aliases)


def _info(version: Any, aliases: list[str]) -> VersionInfo:
    return VersionInfo(
        version=str(version.version),
        run_id=version.run_id,
        aliases=tuple(sorted(aliases)),
        tags=dict(version.tags or {}),
        created_at_ms=version.creation_timestamp,
    )


class MlflowModelImports:
    """The import run (``services.registry.importing``): reads a source model's run,
    logs a run of Flywheel's own layout in the model's experiment."""

    def __init__(self, tracking_uri: str) -> None:
        bound_mlflow_requests()
        mlflow.set_tracking_uri(tracking_uri)
        self._tracking_uri = tracking_uri
        self._client = mlflow_client(tracking_uri)

    def source_holdout(self, model_uri: str) -> pd.DataFrame | None:
        """``holdout/validation.parquet`` of the run that logged ``model_uri``, or None."""
        with mlflow_outages():
            run_id = self._source_run_id(model_uri)
        if not run_id:
            return None
        try:
            return MlflowCandidateLoader(self._tracking_uri).holdout(run_id)
        except NotFoundError:
            return None

    def _source_run_id(self, model_uri: str) -> str | None:
        """The run a model belongs to: a registered version's own run (an imported copy's
        ``MLmodel`` still names the run it was first logged in)."""
        scheme, _, path = model_uri.partition(":/")
        if scheme == "runs":
            return path.strip("/").split("/")[0] or None
        name, slash, version = path.strip("/").partition("/")
        if scheme == "models" and slash and version.isdigit():
            return self._client.get_model_version(name, version).run_id or None
        if scheme == "models" and "@" in name:
            name, _, alias = name.rpartition("@")
            return self._client.get_model_version_by_alias(name, alias).run_id or None
        run_id = mlflow.models.get_model_info(model_uri).run_id
        return str(run_id) if run_id else None

    def log_import(self, record: ImportRecord) -> str:
        """Log the import run; return its id. The model is copied into it, so the
        registered version is this run's and finds its reference, holdout and metrics."""
        with mlflow_outages(), tempfile.TemporaryDirectory() as tmp:
            model_dir = mlflow.artifacts.download_artifacts(
                artifact_uri=record.source_uri, dst_path=str(Path(tmp) / "source")
            )
            experiment_id = self._experiment_id(record.model_name)
            with mlflow.start_run(experiment_id=experiment_id, tags=import_tags(record)) as run:
                mlflow.log_artifacts(model_dir, artifact_path=MODEL_ARTIFACT)
                _log_import_artifacts(record.evaluation, Path(tmp))
                run_id: str = run.info.run_id
        log.info("import run logged", extra={"model": record.model_name, "run_id": run_id})
        return run_id

    def _experiment_id(self, name: str) -> str:
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self._client.create_experiment(name))
        except MlflowException:
            found = self._client.get_experiment_by_name(name)  # created meanwhile
            if found is None:
                raise
            return str(found.experiment_id)


def _log_import_artifacts(evaluation: Evaluation, folder: Path) -> None:
    """Metrics and the three frames, where a trained run has them."""
    metrics = evaluation.metrics.model_dump(exclude_none=True)
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
    frames = {
        "reference/features.parquet": evaluation.reference,
        "reference/predictions.parquet": evaluation.predictions,
        "holdout/validation.parquet": evaluation.holdout,
    }
    for artifact, frame in frames.items():
        directory, name = artifact.split("/")
        path = folder / name
        frame.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=directory)
