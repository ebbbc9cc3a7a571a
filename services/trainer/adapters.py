"""The trainer's ports on real infrastructure: batch files, Redis, MLflow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import sklearn
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from redis.exceptions import RedisError

from services.trainer.coalesce import PendingArrival, StagedOutcome, TriggerEvent
from services.trainer.core import (
    TrainedModel,
    column_misfit,
    heartbeat_interval,
    lease_after_renewal,
    reference_predictions,
)
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
from shared.events import (
    DataArrived,
    DatasetRef,
    DriftDetected,
    ModelRejected,
    ModelTrained,
    RetrainModel,
    model_key,
)
from shared.mlflow_client import mlflow_client, mlflow_outages
from shared.redis_client import RedisClient, move_key
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

    def __init__(self, redis: RedisClient, cap: int) -> None:
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


#: Accept a trigger once: its once-key (7 days) says whether it was added before.
_ADD_ONCE = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[2])) then
  return 0
end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""

#: Remove the pending triggers with these event ids (ARGV[2..]); with ARGV[1] == '1' also
#: forget the staged outcome. One step: a crash cannot leave half of it done.
_SETTLE = """
local gone = {}
for i = 2, #ARGV do gone[ARGV[i]] = true end
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if gone[cjson.decode(item)['event']['event_id']] then
    redis.call('LREM', KEYS[1], 1, item)
  end
end
if ARGV[1] == '1' then redis.call('DEL', KEYS[2]) end
return 1
"""

#: Stage an outcome only while the lease (KEYS[1]) holds this replica's token (ARGV[1]).
_STAGE_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""

#: How long a trigger's once-key is kept: as long as an event's idempotency marker.
TRIGGER_ONCE_TTL_S = 7 * 24 * 3600


class RedisPendingTriggers:
    """Pending triggers in a Redis list per model, so a restart loses none; each accepted once.

    Beside it, per model: a key per accepted trigger (``trigger:<event id>`` or
    the schedule's ``schedule:<period>``, kept ``once_ttl_s``) and the staged
    outcome of a training (``outbox``). All share the model's hash tag.
    """

    def __init__(self, redis: RedisClient, once_ttl_s: int = TRIGGER_ONCE_TTL_S) -> None:
        self._redis = redis
        self._once_ttl_s = once_ttl_s

    @staticmethod
    def key(model_name: str) -> str:
        """The Redis key of a model's pending triggers (hash-tagged by model)."""
        return model_key("trainer", model_name, "pending")

    @staticmethod
    def outbox_key(model_name: str) -> str:
        """The Redis key of a model's staged, not yet published, training outcome."""
        return model_key("trainer", model_name, "outbox")

    async def add(self, model_name: str, arrival: PendingArrival, once: str | None = None) -> bool:
        """Append ``arrival`` unless a trigger of the same ``once`` name (default: its event
        id) was added within ``once_ttl_s``; True when added."""
        name = once or f"trigger:{arrival.event.event_id}"
        keys = (self.key(model_name), model_key("trainer", model_name, name))
        added = await self._redis.eval(
            _ADD_ONCE, 2, *keys, _arrival_json(arrival), str(self._once_ttl_s)
        )
        return bool(added)

    async def waiting(self, model_name: str) -> list[PendingArrival]:
        """Every pending trigger, oldest first."""
        raw: list[bytes | str] = await self._redis.lrange(self.key(model_name), 0, -1)
        return [_arrival(item) for item in raw]

    async def remove(self, model_name: str, arrivals: list[PendingArrival]) -> None:
        """Remove exactly these triggers (by event id); ones added meanwhile stay."""
        ids = [arrival.event.event_id for arrival in arrivals]
        await self._settle(model_name, ids, forget_staged=False)

    async def stage(self, model_name: str, staged: StagedOutcome, fence: str) -> bool:
        """Keep ``staged`` if the model's lease still holds ``fence``; False when lost."""
        keys = (RedisTrainingLock.key(model_name), self.outbox_key(model_name))
        done = await self._redis.eval(_STAGE_FENCED, 2, *keys, fence, _staged_json(staged))
        return bool(done)

    async def staged(self, model_name: str) -> StagedOutcome | None:
        """The staged outcome not yet settled, if any."""
        raw: bytes | str | None = await self._redis.get(self.outbox_key(model_name))
        return None if raw is None else _staged(raw)

    async def settle(self, model_name: str, staged: StagedOutcome) -> None:
        """Forget the published outcome and the triggers it covered, in one step."""
        await self._settle(model_name, list(staged.covered), forget_staged=True)

    async def _settle(self, model_name: str, ids: list[str], forget_staged: bool) -> None:
        keys = (self.key(model_name), self.outbox_key(model_name))
        await self._redis.eval(_SETTLE, 2, *keys, "1" if forget_staged else "0", *ids)


#: Keys of the single-model releases, before every key was hash-tagged by its model.
_LEGACY_KEYS = {
    "batches": "flywheel:trainer:batches:{}",
    "pending": "flywheel:trainer:pending:{}",
}


async def adopt_legacy_keys(redis: RedisClient, model_name: str) -> list[str]:
    """Move a model's batch list and pending arrivals from the single-model keys to its own.

    Run once at start-up, before anything consumes: after an upgrade the default
    model keeps its history instead of looking lost. A key already at the new
    place wins (RENAMENX). Returns the kinds moved. Remove with the default model.
    The legacy keys carry no hash tag: on a Redis Cluster the move is a copy and a
    delete (``move_key``), as RENAMENX across slots is refused (CROSSSLOT).
    """
    moved = []
    for kind, pattern in _LEGACY_KEYS.items():
        legacy, own = pattern.format(model_name), model_key("trainer", model_name, kind)
        if await move_key(redis, legacy, own, replace=False):
            moved.append(kind)
    return moved


#: The event type of each trigger kind, to read a pending trigger back.
_TRIGGER_EVENTS: dict[str, type[TriggerEvent]] = {
    "data": DataArrived,
    "drift": DriftDetected,
    "manual": RetrainModel,
    "schedule": RetrainModel,
}

_OUTCOMES: dict[str, type[ModelTrained | ModelRejected]] = {
    "model-trained": ModelTrained,
    "model-rejected": ModelRejected,
}


def _arrival_json(arrival: PendingArrival) -> str:
    return json.dumps(
        {
            "received_at": arrival.received_at,
            "trigger": arrival.trigger,
            "event": arrival.event.model_dump(mode="json"),
        },
        sort_keys=True,
    )


def _arrival(raw: bytes | str) -> PendingArrival:
    data = json.loads(raw)
    trigger = data.get("trigger", "data")  # entries of earlier releases: data arrivals
    event = _TRIGGER_EVENTS[trigger].model_validate(data["event"])
    return PendingArrival(event, float(data["received_at"]), trigger)


def _staged_json(staged: StagedOutcome) -> str:
    return json.dumps(
        {"covered": list(staged.covered), "event": staged.outcome.model_dump(mode="json")}
    )


def _staged(raw: bytes | str) -> StagedOutcome:
    data = json.loads(raw)
    outcome = _OUTCOMES[data["event"]["type"]].model_validate(data["event"])
    return StagedOutcome(outcome, tuple(data["covered"]))


#: Extend the lease only while it holds this replica's token.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

#: Release the lease only while it holds this replica's token (never a successor's).
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisLease:
    """One held training lease: a token under the model's lock key, renewed every
    ``heartbeat_s`` by a background task until released."""

    def __init__(self, redis: RedisClient, key: str, ttl_s: float, heartbeat_s: float) -> None:
        self._redis, self._key = redis, key
        self._ttl_s, self._heartbeat_s = ttl_s, heartbeat_s
        self._token = uuid.uuid4().hex
        self._lost = False
        self._beating: asyncio.Task[None] | None = None

    @property
    def token(self) -> str:
        """The value under the lock key while this lease holds it."""
        return self._token

    @property
    def lost(self) -> bool:
        """True once a renewal found the lease gone (a read from a training thread is safe)."""
        return self._lost

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when taken."""
        taken = await self._redis.set(self._key, self._token, nx=True, px=self._ttl_ms())
        return bool(taken)

    def start_heartbeat(self) -> None:
        """Renew the lease in the background until ``release``."""
        self._beating = asyncio.create_task(self._beat(), name=f"lease-heartbeat-{self._key}")

    async def release(self) -> None:
        """Stop renewing and give the lease up, if it is still this one's."""
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        try:
            released = await self._redis.eval(_RELEASE, 1, self._key, self._token)
        except RedisError as error:  # it expires on its own after the TTL
            log.warning(
                "training lease not released", extra={"key": self._key, "error": repr(error)}
            )
            return
        if not released and not self._lost:
            log.warning("training lease expired before release", extra={"key": self._key})

    async def _beat(self) -> None:
        confirmed = time.monotonic()
        while True:
            await asyncio.sleep(self._heartbeat_s)
            state = lease_after_renewal(
                await self._renew(), time.monotonic() - confirmed, self._ttl_s
            )
            if state == "held":
                confirmed = time.monotonic()
            elif state == "lost":
                self._lost = True
                log.error("training lease lost", extra={"key": self._key})
                return

    async def _renew(self) -> bool | None:
        try:
            return bool(await self._redis.eval(_RENEW, 1, self._key, self._token, self._ttl_ms()))
        except RedisError as error:  # unsure: the next beat asks again
            log.warning(
                "training lease not renewed", extra={"key": self._key, "error": repr(error)}
            )
            return None

    def _ttl_ms(self) -> int:
        return max(1, int(self._ttl_s * 1000))


class RedisTrainingLock:
    """A lease per model in Redis: it expires ``ttl_s`` after its last renewal, so a crashed
    trainer frees it soon; a live one renews it every ``heartbeat_s`` while it trains."""

    def __init__(
        self,
        redis: RedisClient,
        ttl_s: float,
        wait_s: float = 0.0,
        heartbeat_s: float | None = None,
    ) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._wait_s = wait_s
        self._heartbeat_s = heartbeat_interval(ttl_s, heartbeat_s)

    @staticmethod
    def key(model_name: str) -> str:
        """The Redis key of a model's lease: one model's training never waits for another's."""
        return model_key("trainer", model_name, "lock")

    @contextlib.asynccontextmanager
    async def try_hold(self, model_name: str) -> AsyncIterator[RedisLease | None]:
        """Hold the model's lease for the block, renewed; None when another holds it."""
        lease = self._lease(model_name)
        if not await lease.acquire():
            yield None
            return
        async with self._held(lease):
            yield lease

    @contextlib.asynccontextmanager
    async def hold(self, model_name: str) -> AsyncIterator[RedisLease]:
        """Wait up to ``wait_s`` for the model's lease and hold it for the block, renewed."""
        lease = self._lease(model_name)
        deadline = time.monotonic() + self._wait_s
        while not await lease.acquire():
            if time.monotonic() >= deadline:
                raise DependencyUnavailableError(
                    f"training of {model_name} still busy after {self._wait_s:.0f} s"
                )
            await asyncio.sleep(min(0.05, self._wait_s))
        async with self._held(lease):
            yield lease

    def _lease(self, model_name: str) -> RedisLease:
        return RedisLease(self._redis, self.key(model_name), self._ttl_s, self._heartbeat_s)

    @contextlib.asynccontextmanager
    async def _held(self, lease: RedisLease) -> AsyncIterator[None]:
        lease.start_heartbeat()
        try:
            yield
        finally:
            await lease.release()


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
