"""The registry's port on MLflow's model registry."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from services.registry.ports import VersionInfo
from shared.errors import InvalidInputError, NotFoundError

log = logging.getLogger(__name__)


class MlflowModelRegistry:
    """Versions, tags and aliases in MLflow's model registry."""

    def __init__(self, tracking_uri: str) -> None:
        mlflow.set_tracking_uri(tracking_uri)
        self._client = MlflowClient(tracking_uri=tracking_uri)

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

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Set tags on one version."""
        for key, value in tags.items():
            self._client.set_model_version_tag(name, version, key, value)

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
        self._client.set_registered_model_alias(name, alias, version)

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, newest first (NotFoundError when the model is unknown)."""
        try:
            aliases: dict[str, Any] = self._client.get_registered_model(name).aliases
        except MlflowException as error:
            if _missing(error):
                raise NotFoundError(f"no registered model named {name!r}") from error
            raise
        # search_model_versions leaves aliases out; the registered model has them all.
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        found = self._search(f"name='{_quoted(name)}'")
        versions = [_info(v, by_version.get(str(v.version), [])) for v in found]
        return sorted(versions, key=lambda v: int(v.version), reverse=True)

    def _search(self, filter_string: str) -> list[Any]:
        return list(self._client.search_model_versions(filter_string))


def _quoted(value: str) -> str:
    # MLflow's filter grammar has no escape for quotes; refuse rather than mis-filter.
    if "'" in value:
        raise InvalidInputError(f"quote in name {value!r}")
    return value


def _missing(error: MlflowException) -> bool:
    return bool(error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST))


def _info(version: Any, aliases: list[str]) -> VersionInfo:
    return VersionInfo(
        version=str(version.version),
        run_id=version.run_id,
        aliases=tuple(sorted(aliases)),
        tags=dict(version.tags or {}),
        created_at_ms=version.creation_timestamp,
    )
