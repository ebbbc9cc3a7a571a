"""MLflow reference store and Redis window-state store of the monitor."""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
import requests
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from pyarrow import ArrowException
from redis.asyncio import Redis

from services.monitor.core import PREDICTION, Reference, baseline_loss
from services.monitor.ports import SavedState
from shared.events import model_key
from shared.mlflow_client import mlflow_client, mlflow_outages, outage_cause
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "reference/features.parquet"
PREDICTIONS_ARTIFACT = "reference/predictions.parquet"


class MlflowReferenceStore:
    """Reads the reference sample (and the model's answers on it) logged with a version's run.

    MLflow not answering raises DependencyUnavailableError (the batch waits and is
    retried). A version whose sample is absent or unreadable (a model trained
    elsewhere, a corrupt file) gets a reference saying why, with its validation
    baselines: the monitor then skips its data drift and still watches its concept
    drift. ``reference/predictions.parquet`` absent or unusable: no prediction test.
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
            number = str(found.version)
            if not found.run_id:
                return Reference.without_sample(number, "the version has no MLflow run")
            return self._of_run(model_name, spec, number, found.run_id)

    def _of_run(self, model_name: str, spec: ModelSpec, version: str, run_id: str) -> Reference:
        try:
            metrics = self._client.get_run(run_id).data.metrics
            present = {a.path for a in self._client.list_artifacts(run_id, "reference")}
        except MlflowException as error:
            if outage_cause(error) is not None:
                raise
            return Reference.without_sample(version, f"its run {run_id} is unreadable: {error}")
        accuracy = metrics.get("accuracy")
        loss = baseline_loss(metrics, spec.loss) if spec.is_regression else None
        if REFERENCE_ARTIFACT not in present:
            why = f"its run {run_id} has no {REFERENCE_ARTIFACT}"
            return Reference.without_sample(version, why, accuracy, loss, spec.loss)
        frame = self._frame(run_id, REFERENCE_ARTIFACT)
        if isinstance(frame, str):
            why = f"{REFERENCE_ARTIFACT} of run {run_id} is unreadable: {frame}"
            return Reference.without_sample(version, why, accuracy, loss, spec.loss)
        predictions = self._predictions(model_name, spec, version, run_id, present)
        log.info(
            "reference loaded",
            extra={"model": model_name, "version": version, "rows": len(frame)},
        )
        return reference_from_frame(version, frame, spec, accuracy, predictions, loss)

    def _predictions(
        self, model_name: str, spec: ModelSpec, version: str, run_id: str, present: set[str]
    ) -> pd.Series | None:
        """The model's answers on the reference rows, when logged and usable."""
        extra = {"model": model_name, "version": version}
        if PREDICTIONS_ARTIFACT not in present:
            log.debug("no reference predictions: prediction drift not tested", extra=extra)
            return None
        frame = self._frame(run_id, PREDICTIONS_ARTIFACT)
        why = frame if isinstance(frame, str) else prediction_problem(frame, spec)
        if why is not None:
            log.warning("reference predictions not used", extra={**extra, "reason": why})
            return None
        assert not isinstance(frame, str)
        return frame[PREDICTION]

    def _frame(self, run_id: str, artifact: str) -> pd.DataFrame | str:
        """The artifact's frame, or why it cannot be read (an outage raises)."""
        try:
            path = download_artifacts(
                run_id=run_id, artifact_path=artifact, tracking_uri=self._tracking_uri
            )
            return pd.read_parquet(path)
        except (MlflowException, requests.RequestException) as error:
            if outage_cause(error) is not None:
                raise
            return repr(error)
        except (OSError, ValueError, ArrowException) as error:  # not a parquet file
            return repr(error)


def prediction_problem(frame: pd.DataFrame, spec: ModelSpec) -> str | None:
    """Why ``frame`` cannot serve as the model's reference answers; None when it can.

    >>> from shared.spec import load_spec
    >>> prediction_problem(pd.DataFrame({"prediction": ["steady"]}), load_spec()) is None
    True
    >>> prediction_problem(pd.DataFrame({"value": [1.0]}), load_spec())
    "no 'prediction' column"
    """
    if PREDICTION not in frame.columns:
        return f"no {PREDICTION!r} column"
    if PREDICTION in spec.feature_names:
        return f"the model has a feature named {PREDICTION!r}"
    if spec.is_regression and not pd.api.types.is_numeric_dtype(frame[PREDICTION]):
        return f"a regressor's {PREDICTION!r} column is not numeric"
    return None


def reference_from_frame(
    version: str,
    frame: pd.DataFrame,
    spec: ModelSpec,
    accuracy: float | None,
    predictions: pd.Series | None = None,
    loss: float | None = None,
) -> Reference:
    """Numeric and categorical columns of ``frame``; features it lacks are listed, not tested.

    ``predictions``: the model's answers on the sample, tested as column ``prediction``
    (numeric for a regressor, categorical for a classifier).
    """
    missing = tuple(name for name in spec.feature_names if name not in frame.columns)
    numeric = {n: frame[n].to_numpy() for n in spec.numeric_features if n in frame.columns}
    categorical = {n: frame[n].to_numpy() for n in spec.categorical_features if n in frame.columns}
    if predictions is not None and spec.is_regression:
        numeric[PREDICTION] = predictions.to_numpy(dtype=float)
    elif predictions is not None:
        categorical[PREDICTION] = predictions.astype(str).to_numpy()
    return Reference.from_columns(
        version,
        numeric,
        categorical,
        missing=missing,
        baseline_accuracy=accuracy,
        baseline_loss=loss,
        loss=spec.loss,
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
