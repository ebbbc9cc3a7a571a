"""MLflow implementation of the monitor's reference store."""

from __future__ import annotations

import logging

import pandas as pd
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

from services.monitor.core import Reference
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "reference/features.parquet"


class MlflowReferenceStore:
    """Reads the reference sample the trainer logged with the champion's run."""

    def __init__(self, tracking_uri: str, spec: ModelSpec) -> None:
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._tracking_uri = tracking_uri
        self._spec = spec

    def champion_reference(self, model_name: str) -> Reference | None:
        """The champion's reference sample, or None while there is no champion."""
        try:
            version = self._client.get_model_version_by_alias(model_name, "champion")
        except MlflowException:
            return None
        path = download_artifacts(
            run_id=version.run_id,
            artifact_path=REFERENCE_ARTIFACT,
            tracking_uri=self._tracking_uri,
        )
        frame = pd.read_parquet(path)
        columns = {name: frame[name].to_numpy() for name in self._spec.numeric_features}
        log.info("reference loaded", extra={"version": version.version, "rows": len(frame)})
        return Reference.from_columns(str(version.version), columns)
