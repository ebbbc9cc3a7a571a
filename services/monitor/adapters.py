"""MLflow reference store and Redis window-state store of the monitor."""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from redis.asyncio import Redis

from services.monitor.core import Reference
from services.monitor.ports import SavedState
from shared.events import model_key
from shared.mlflow_client import mlflow_client, mlflow_outages, outage_cause
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "reference/features.parquet"


class MlflowReferenceStore:
    """Reads the reference sample the trainer logged with a version's run.

    MLflow not answering raises DependencyUnavailableError (the batch waits and is
    retried); any other failure to read the sample is the model's own and propagates.
    """

    def __init__(self, tracking_uri: str) -> None:
        self._client = mlflow_client(tracking_uri)
        self._tracking_uri = tracking_uri

    def reference(
        self, model_name: str, spec: ModelSpec, version: str | None = None
    ) -> Reference | None:
        """The sample of ``version`` (the champion when None), or None when there is none."""
        with mlflow_outages():
            try:
                found = (
                    self._client.get_model_version(model_name, version)
                    if version
                    else self._client.get_model_version_by_alias(model_name, "champion")
                )
            except MlflowException as error:
                if outage_cause(error) is not None:
                    raise  # translated by mlflow_outages
                return None  # no such version or no champion yet: nothing to test against
            if found.run_id is None:
                return None
            path = download_artifacts(
                run_id=found.run_id,
                artifact_path=REFERENCE_ARTIFACT,
                tracking_uri=self._tracking_uri,
            )
            accuracy = self._client.get_run(found.run_id).data.metrics.get("accuracy")
        frame = pd.read_parquet(path)
        reference = reference_from_frame(str(found.version), frame, spec, accuracy)
        log.info(
            "reference loaded",
            extra={"model": model_name, "version": found.version, "rows": len(frame)},
        )
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
    """Window state in Redis: a small JSON document and a list of row chunks, saved per batch.

    Each batch appends only its own rows, so a save costs O(batch), not O(window);
    the state and the chunk are written in one MULTI/EXEC transaction.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def load(self, model_name: str) -> SavedState | None:
        """The last saved state, the open window's row chunks and the pooled windows, or None."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(_key("state", model_name))
            pipe.lrange(_key("rows", model_name), 0, -1)
            pipe.lrange(_key("pooled", model_name), 0, -1)
            raw, rows, pooled = await pipe.execute()
        if raw is None:
            return None
        return (
            dict(json.loads(raw)),
            [dict(json.loads(c)) for c in rows],
            [dict(json.loads(c)) for c in pooled],
        )

    async def clear(self, model_name: str) -> None:
        """Forget the saved state (a new reference starts from nothing)."""
        await self._redis.delete(*(_key(k, model_name) for k in ("state", "rows", "pooled")))

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
        async with self._redis.pipeline(transaction=True) as pipe:
            if restart_rows:
                pipe.delete(_key("rows", model_name))
            if rows is not None:
                pipe.rpush(_key("rows", model_name), json.dumps(rows))
            if pooled:
                pipe.rpush(_key("pooled", model_name), *(json.dumps(c) for c in pooled))
                pipe.ltrim(_key("pooled", model_name), -keep_pooled, -1)
            pipe.set(_key("state", model_name), json.dumps(state))
            await pipe.execute()


class NoMarkers:
    """Idempotency for prediction-logged without a Redis key per event.

    The monitor's own state remembers the ids of the last batches it counted,
    which is all a redelivery after a crash can repeat (offsets are committed
    after every batch), so memory stays bounded at any event rate.
    """

    async def seen(self, event_id: str) -> bool:
        """Never: the window state filters repeats."""
        return False

    async def mark(self, event_id: str) -> None:
        """Nothing to remember here."""


def _key(kind: str, model_name: str) -> str:
    # Hash-tagged by model: one model's state, rows and pooled windows share a cluster slot.
    return model_key("monitor", model_name, kind)
