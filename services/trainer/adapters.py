"""The trainer's ports on real infrastructure: batch files, Redis, MLflow."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import sklearn
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from redis.asyncio import Redis
from redis.exceptions import LockError, ResponseError

from services.trainer.coalesce import PendingArrival
from services.trainer.core import TrainedModel, column_misfit, reference_predictions
from services.trainer.custom import CUSTOM_PREFIX, requirements_of, saved_types
from services.trainer.ports import RunContext
from services.trainer.tracking import (
    code_version,
    log_confusion_matrix,
    log_datasets,
    log_holdout,
    log_predicted_vs_true,
    run_metrics,
)
from shared.datasets import load_batch, path_of
from shared.errors import DependencyUnavailableError, InvalidInputError
from shared.events import DataArrived, DatasetRef, model_key
from shared.mlflow_client import mlflow_client, mlflow_outages
from shared.spec import ModelSpec
from shared.torch_mlp import TRUSTED_TYPES

log = logging.getLogger(__name__)


class FileBatchSource:
    """Batches from local Parquet/CSV files, verified against hash and their model's spec."""

    def load(self, ref: DatasetRef, spec: ModelSpec) -> pd.DataFrame:
        """The batch's rows (NotFoundError / InvalidInputError when missing or misfit).

        A batch missing columns of the spec is named with its columns the spec does
        not know too: a batch announced for the wrong model says so at a glance.
        """
        try:
            return load_batch(ref, spec)
        except InvalidInputError as error:
            misfit = column_misfit(_columns_of(ref), spec)
            if misfit is None:
                raise
            raise InvalidInputError(
                f"dataset {ref.uri} does not fit {spec.name}: {misfit}"
            ) from error


def _columns_of(ref: DatasetRef) -> list[str] | None:
    """The file's column names (header only); None when it cannot be read."""
    try:
        path = path_of(ref.uri)
        if ref.format == "csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        return list(pq.read_schema(path).names)
    except Exception:  # unreadable: the original error says why
        return None


#: Drop every entry with the new batch's content hash, append the batch, trim to the cap;
#: return how many entries were dropped. One script, so two trainers cannot interleave.
_RECORD_BATCH = """
local dropped = 0
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if cjson.decode(item)['sha256'] == ARGV[1] then
    dropped = dropped + redis.call('LREM', KEYS[1], 0, item)
  end
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
return dropped
"""


class RedisBatchHistory:
    """A capped Redis list of DatasetRef JSON per model, newest last, one per content hash."""

    def __init__(self, redis: Redis, cap: int) -> None:
        self._redis = redis
        self._cap = cap

    @staticmethod
    def key(model_name: str) -> str:
        """The Redis key of a model's batch list (hash-tagged by model)."""
        return model_key("trainer", model_name, "batches")

    async def record(self, model_name: str, ref: DatasetRef) -> bool:
        """Append ``ref``; a batch seen before moves to the end instead of appearing twice.

        "Seen" means the same content (SHA-256 of the file's bytes), whatever its URI:
        a copy of a file under another name is not new data. Returns True when new.
        """
        payload = ref.model_dump_json()
        dropped = await self._redis.eval(
            _RECORD_BATCH, 1, self.key(model_name), ref.sha256, payload, str(self._cap)
        )
        return int(dropped) == 0

    async def recent(self, model_name: str, count: int) -> list[DatasetRef]:
        """The ``count`` most recent batches, oldest first."""
        raw: list[bytes | str] = await self._redis.lrange(self.key(model_name), -count, -1)
        return [DatasetRef.model_validate_json(item) for item in raw]


class RedisPendingTriggers:
    """Pending data-arrived events in a Redis list per model, so a restart loses none."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    @staticmethod
    def key(model_name: str) -> str:
        """The Redis key of a model's pending arrivals (hash-tagged by model)."""
        return model_key("trainer", model_name, "pending")

    async def add(self, model_name: str, arrival: PendingArrival) -> None:
        """Append ``arrival``."""
        await self._redis.rpush(self.key(model_name), _arrival_json(arrival))

    async def waiting(self, model_name: str) -> list[PendingArrival]:
        """Every pending arrival, oldest first."""
        raw: list[bytes | str] = await self._redis.lrange(self.key(model_name), 0, -1)
        return [_arrival(item) for item in raw]

    async def remove(self, model_name: str, arrivals: list[PendingArrival]) -> None:
        """Remove exactly these arrivals (by event id); ones added meanwhile stay."""
        ids = {arrival.event.event_id for arrival in arrivals}
        key = self.key(model_name)
        raw: list[bytes | str] = await self._redis.lrange(key, 0, -1)
        async with self._redis.pipeline(transaction=True) as pipe:
            for item in raw:
                if _arrival(item).event.event_id in ids:
                    pipe.lrem(key, 1, item)  # type: ignore[arg-type]
            await pipe.execute()


#: Keys of the single-model releases, before every key was hash-tagged by its model.
_LEGACY_KEYS = {
    "batches": "flywheel:trainer:batches:{}",
    "pending": "flywheel:trainer:pending:{}",
}


async def adopt_legacy_keys(redis: Redis, model_name: str) -> list[str]:
    """Move a model's batch list and pending arrivals from the single-model keys to its own.

    Run once at start-up, before anything consumes: after an upgrade the default
    model keeps its history instead of looking lost. A key already at the new
    place wins (RENAMENX). Returns the kinds moved. Remove with the default model.
    """
    moved = []
    for kind, pattern in _LEGACY_KEYS.items():
        try:
            if await redis.renamenx(
                pattern.format(model_name), model_key("trainer", model_name, kind)
            ):
                moved.append(kind)
        except ResponseError:  # no legacy key: the usual case
            continue
    return moved


def _arrival_json(arrival: PendingArrival) -> str:
    return json.dumps(
        {"received_at": arrival.received_at, "event": arrival.event.model_dump(mode="json")},
        sort_keys=True,
    )


def _arrival(raw: bytes | str) -> PendingArrival:
    data = json.loads(raw)
    return PendingArrival(DataArrived.model_validate(data["event"]), float(data["received_at"]))


class RedisTrainingLock:
    """A Redis lock per model with an expiry, so a crashed trainer cannot hold it forever."""

    def __init__(self, redis: Redis, ttl_s: float, wait_s: float) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._wait_s = wait_s

    @staticmethod
    def key(model_name: str) -> str:
        """The Redis key of a model's lock: one model's training never waits for another's."""
        return model_key("trainer", model_name, "lock")

    @contextlib.asynccontextmanager
    async def hold(self, model_name: str) -> AsyncIterator[None]:
        """Wait up to ``wait_s`` for the lock, hold it for the block, release it after."""
        lock = self._redis.lock(
            self.key(model_name),
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
    """Logs each training as an MLflow run in an experiment named after the model.

    Every model has its own experiment (created on its first training), so one
    model's runs, lineage and the batch list recovery reads never mix with another's.
    """

    def __init__(self, tracking_uri: str, label: str = "segment") -> None:
        mlflow.set_tracking_uri(tracking_uri)
        self._client = mlflow_client(tracking_uri)
        self._label = label
        self._code_version = code_version()

    def log_training(self, model: TrainedModel, context: RunContext) -> str:
        """Log params, metrics, tags, the model and its reference sample; return the run id."""
        with mlflow_outages():
            return self._log(model, context)

    def _log(self, model: TrainedModel, context: RunContext) -> str:
        experiment_id = self._experiment_id(context.model_name)
        tags = {
            **run_tags(context),
            "flywheel.code_version": self._code_version,
            "flywheel.device": model.device,
        }
        with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
            mlflow.log_params(model.params)
            mlflow.log_metrics(run_metrics(model))
            mlflow.log_dict(
                {
                    "datasets": [ref.model_dump() for ref in context.datasets],
                    "older_sample": [ref.model_dump() for ref in context.sampled],
                },
                "datasets.json",
            )
            log_datasets(model, context, context.label or self._label)
            if model.metrics.is_regression:
                log_predicted_vs_true(model, context.label or self._label)
            else:
                log_confusion_matrix(model)
            _log_model(model)
            _log_reference(model)
            log_holdout(model.holdout)
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
        "flywheel.trigger_ids": ",".join(context.trigger_ids or (context.event_id,)),
    }


def _log_model(model: TrainedModel) -> None:
    sample = model.reference.head(5)
    # Explicit requirements: inferring them means loading the model again, slowly.
    requirements = [f"scikit-learn=={sklearn.__version__}", "pandas", "numpy"]
    trusted = TRUSTED_TYPES
    if model.algorithm.startswith(CUSTOM_PREFIX):  # a team's estimator: whatever it is made of
        trusted = saved_types(model.pipeline)
        requirements += requirements_of(trusted)
    mlflow.sklearn.log_model(
        model.pipeline,
        name="model",
        signature=infer_signature(sample, model.pipeline.predict(sample)),
        input_example=sample,
        pip_requirements=requirements,
        skops_trusted_types=trusted,
    )


def _log_reference(model: TrainedModel) -> None:
    """The monitor's reference: the feature sample, and the model's predictions on it."""
    with tempfile.TemporaryDirectory() as tmp:
        features, predictions = Path(tmp) / "features.parquet", Path(tmp) / "predictions.parquet"
        model.reference.to_parquet(features, index=False)
        reference_predictions(model).to_parquet(predictions, index=False)
        mlflow.log_artifact(str(features), artifact_path="reference")
        mlflow.log_artifact(str(predictions), artifact_path="reference")
