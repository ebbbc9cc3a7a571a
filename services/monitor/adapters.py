"""MLflow reference store and Redis window-state store of the monitor."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from redis.asyncio import Redis

from services.monitor.core import Reference
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "reference/features.parquet"


class MlflowReferenceStore:
    """Reads the reference sample the trainer logged with a version's run."""

    def __init__(self, tracking_uri: str, spec: ModelSpec) -> None:
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._tracking_uri = tracking_uri
        self._spec = spec

    def reference(self, model_name: str, version: str | None = None) -> Reference | None:
        """The sample of ``version`` (the champion when None), or None when there is none."""
        try:
            found = (
                self._client.get_model_version(model_name, version)
                if version
                else self._client.get_model_version_by_alias(model_name, "champion")
            )
        except MlflowException:
            return None
        if found.run_id is None:
            return None
        path = download_artifacts(
            run_id=found.run_id, artifact_path=REFERENCE_ARTIFACT, tracking_uri=self._tracking_uri
        )
        frame = pd.read_parquet(path)
        accuracy = self._client.get_run(found.run_id).data.metrics.get("accuracy")
        reference = reference_from_frame(str(found.version), frame, self._spec, accuracy)
        log.info("reference loaded", extra={"version": found.version, "rows": len(frame)})
        return reference


def reference_from_frame(
    version: str, frame: pd.DataFrame, spec: ModelSpec, accuracy: float | None
) -> Reference:
    """Numeric and categorical columns of ``frame``; features it lacks are listed, not tested."""
    missing = tuple(name for name in spec.feature_names if name not in frame.columns)
    return Reference.from_columns(
        version,
        {n: frame[n].to_numpy() for n in spec.numeric_features if n in frame.columns},
        {n: frame[n].to_numpy() for n in spec.categorical_features if n in frame.columns},
        missing=missing,
        baseline_accuracy=accuracy,
    )


class RedisStateStore:
    """Window state in one Redis key, saved together with the ids it counted (MULTI/EXEC)."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    async def load(self, model_name: str) -> dict[str, Any] | None:
        """The last saved state, or None."""
        raw = await self._redis.get(_state_key(model_name))
        return None if raw is None else dict(json.loads(raw))

    async def unseen(self, model_name: str, event_ids: Sequence[str]) -> set[str]:
        """The ids among ``event_ids`` not yet counted: one round trip for the batch."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.exists(_counted_key(model_name, event_id))
            found = await pipe.execute()
        return {e for e, hit in zip(event_ids, found, strict=True) if not hit}

    async def save(self, model_name: str, state: dict[str, Any], event_ids: Sequence[str]) -> None:
        """Save ``state`` and mark ``event_ids`` counted in one transaction."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(_state_key(model_name), json.dumps(state))
            for event_id in event_ids:
                pipe.set(_counted_key(model_name, event_id), b"1", ex=self._ttl_s)
            await pipe.execute()


def _state_key(model_name: str) -> str:
    return f"flywheel:monitor:state:{model_name}"


def _counted_key(model_name: str, event_id: str) -> str:
    return f"flywheel:monitor:counted:{model_name}:{event_id}"
