"""The trainer's ports on real infrastructure: batch files, Redis, MLflow."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import sklearn
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from redis.asyncio import Redis
from redis.exceptions import LockError

from services.trainer.core import TrainedModel
from services.trainer.ports import RunContext
from shared.datasets import load_batch
from shared.errors import DependencyUnavailableError
from shared.events import DatasetRef
from shared.spec import ModelSpec

log = logging.getLogger(__name__)


class FileBatchSource:
    """Batches from local Parquet/CSV files, verified against hash and spec."""

    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec

    def load(self, ref: DatasetRef) -> pd.DataFrame:
        """The batch's rows (NotFoundError / InvalidInputError when missing or misfit)."""
        return load_batch(ref, self._spec)


class RedisBatchHistory:
    """A capped Redis list of DatasetRef JSON per model, newest last."""

    def __init__(self, redis: Redis, cap: int) -> None:
        self._redis = redis
        self._cap = cap

    @staticmethod
    def key(model_name: str) -> str:
        """The Redis key of a model's batch list."""
        return f"flywheel:trainer:batches:{model_name}"

    async def record(self, model_name: str, ref: DatasetRef) -> None:
        """Append ``ref``; a redelivered batch moves to the end instead of appearing twice."""
        payload = ref.model_dump_json()
        key = self.key(model_name)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrem(key, 0, payload)
            pipe.rpush(key, payload)
            pipe.ltrim(key, -self._cap, -1)
            await pipe.execute()

    async def recent(self, model_name: str, count: int) -> list[DatasetRef]:
        """The ``count`` most recent batches, oldest first."""
        raw: list[bytes | str] = await self._redis.lrange(self.key(model_name), -count, -1)
        return [DatasetRef.model_validate_json(item) for item in raw]


class RedisTrainingLock:
    """A Redis lock per model with an expiry, so a crashed trainer cannot hold it forever."""

    def __init__(self, redis: Redis, ttl_s: float, wait_s: float) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._wait_s = wait_s

    @contextlib.asynccontextmanager
    async def hold(self, model_name: str) -> AsyncIterator[None]:
        """Wait up to ``wait_s`` for the lock, hold it for the block, release it after."""
        lock = self._redis.lock(
            f"flywheel:trainer:lock:{model_name}",
            timeout=self._ttl_s,
            blocking_timeout=self._wait_s,
        )
        if not await lock.acquire():
            # Not the event's fault: the offset is rewound and the trigger comes back later.
            raise DependencyUnavailableError(
                f"training of {model_name} still busy after {self._wait_s:.0f} s"
            )
        try:
            yield
        finally:
            try:
                await lock.release()
            except LockError:
                log.warning("training lock expired before release", extra={"model": model_name})


class MlflowModelStore:
    """Logs each training as an MLflow run in an experiment named after the model."""

    def __init__(self, tracking_uri: str) -> None:
        mlflow.set_tracking_uri(tracking_uri)
        self._client = MlflowClient(tracking_uri)

    def log_training(self, model: TrainedModel, context: RunContext) -> str:
        """Log params, metrics, tags, the model and its reference sample; return the run id."""
        experiment_id = self._experiment_id(context.model_name)
        with mlflow.start_run(experiment_id=experiment_id, tags=run_tags(context)) as run:
            mlflow.log_params(model.params)
            mlflow.log_metrics(_metric_values(model))
            mlflow.log_dict(
                {"datasets": [ref.model_dump() for ref in context.datasets]}, "datasets.json"
            )
            _log_model(model)
            _log_reference(model.reference)
            run_id: str = run.info.run_id
        return run_id

    def _experiment_id(self, name: str) -> str:
        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self._client.create_experiment(name))
        except MlflowException:
            # Another trainer may have created it in the meantime.
            experiment = self._client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)


def run_tags(context: RunContext) -> dict[str, str]:
    """The lineage tags every training run carries."""
    return {
        "flywheel.event_id": context.event_id,
        "flywheel.correlation_id": context.correlation_id,
        "flywheel.data_version": context.data_version,
        "flywheel.trigger": context.trigger,
        "flywheel.batches": str(len(context.datasets)),
    }


def _metric_values(model: TrainedModel) -> dict[str, float]:
    values: dict[str, Any] = model.metrics.model_dump()
    values["train_rows"] = model.train_rows
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


def _log_model(model: TrainedModel) -> None:
    sample = model.reference.head(5)
    mlflow.sklearn.log_model(
        model.pipeline,
        name="model",
        signature=infer_signature(sample, model.pipeline.predict(sample)),
        input_example=sample,
        # Explicit requirements: inferring them means loading the model again, slowly.
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", "pandas", "numpy"],
    )


def _log_reference(reference: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.parquet"
        reference.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="reference")
