"""Redis and MLflow implementations of the router's ports."""

from __future__ import annotations

import logging
from typing import Any

from mlflow.exceptions import MlflowException
from redis.asyncio import Redis

from services.router.core import Experiment
from services.router.core.decision import ExperimentStats
from services.router.core.report import LookPoint
from services.router.core.tally import stats_from_counters
from shared.aliases import in_applying_order, promotion_moves
from shared.events import ROUTING_STATE_KEY, ExperimentUpdated
from shared.mlflow_client import mlflow_client

log = logging.getLogger(__name__)


class RedisExperimentStore:
    """One JSON value per model and per experiment id, plus the routing-table key."""

    def __init__(
        self,
        redis: Redis,
        prefix: str = "flywheel:router:experiment:",
        routing_key: str = ROUTING_STATE_KEY,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._by_id = prefix + "by-id:"
        self._index = prefix + "index"
        self._routing_key = routing_key

    async def current(self, model_name: str) -> Experiment | None:
        """The stored experiment of ``model_name``, if any."""
        raw = await self._redis.get(self._prefix + model_name)
        return None if raw is None else Experiment.model_validate_json(raw)

    async def get(self, experiment_id: str) -> Experiment | None:
        """The experiment with this id, if stored."""
        raw = await self._redis.get(self._by_id + experiment_id)
        return None if raw is None else Experiment.model_validate_json(raw)

    async def all(self) -> list[Experiment]:
        """Every stored experiment, newest first."""
        ids = await self._redis.zrevrange(self._index, 0, -1)
        if not ids:
            return []
        raws = await self._redis.mget([self._by_id + _text(i) for i in ids])
        return [Experiment.model_validate_json(r) for r in raws if r is not None]

    async def save(self, experiment: Experiment, update: ExperimentUpdated | None) -> None:
        """Write every key in one MULTI/EXEC so readers never see them disagree."""
        raw = experiment.model_dump_json()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._prefix + experiment.model_name, raw)
            pipe.set(self._by_id + experiment.experiment_id, raw)
            pipe.zadd(self._index, {experiment.experiment_id: experiment.opened_at.timestamp()})
            if update is not None:
                pipe.set(self._routing_key, update.model_dump_json())
            await pipe.execute()

    async def routing_table(self) -> ExperimentUpdated | None:
        """The latest ExperimentUpdated the router stored."""
        raw = await self._redis.get(self._routing_key)
        return None if raw is None else ExperimentUpdated.model_validate_json(raw)


#: Count an event's increments only if its marker is new: both in one atomic step.
_ADD_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  for i = 2, #ARGV, 2 do
    redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  return 1
end
return 0
"""


class RedisOutcomeTally:
    """Counters in one hash per experiment; a once-only marker per counted event."""

    def __init__(
        self,
        redis: Redis,
        prefix: str = "flywheel:router:",
        marker_ttl_s: int = 14 * 24 * 3600,
        max_looks: int = 2000,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._marker_ttl_s = marker_ttl_s
        self._max_looks = max_looks
        self._add_once: Any = redis.register_script(_ADD_ONCE)

    async def add(self, event_id: str, experiment_id: str, increments: dict[str, float]) -> bool:
        """Add ``increments`` to the experiment's counters unless ``event_id`` was counted."""
        args: list[Any] = [self._marker_ttl_s]
        for field, amount in increments.items():
            args += [field, repr(float(amount))]
        keys = [f"{self._prefix}counted:{event_id}", self._stats_key(experiment_id)]
        return bool(await self._add_once(keys=keys, args=args))

    async def stats(self, experiment_id: str) -> ExperimentStats:
        """The experiment's statistics from its counters."""
        raw = await self._redis.hgetall(self._stats_key(experiment_id))
        return stats_from_counters({_text(k): float(v) for k, v in raw.items()})

    async def append_look(self, experiment_id: str, point: LookPoint) -> None:
        """Append one look's summary (the oldest go beyond ``max_looks``)."""
        key = f"{self._prefix}looks:{experiment_id}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, point.model_dump_json())
            pipe.ltrim(key, -self._max_looks, -1)
            await pipe.execute()

    async def history(self, experiment_id: str) -> list[LookPoint]:
        """Every kept look, oldest first."""
        raws = await self._redis.lrange(f"{self._prefix}looks:{experiment_id}", 0, -1)
        return [LookPoint.model_validate_json(r) for r in raws]

    def _stats_key(self, experiment_id: str) -> str:
        return f"{self._prefix}stats:{experiment_id}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class MlflowModelAliases:
    """Moves ``champion``/``challenger`` aliases in MLflow's registry (blocking).

    Promotion takes the registry's path (``shared.aliases``): the replaced
    champion becomes ``champion-1`` and older ones shift, so ``flywheel
    rollback`` after an automatic promotion returns to it.
    """

    def __init__(self, tracking_uri: str) -> None:
        self._client = mlflow_client(tracking_uri)

    def promote(self, model_name: str, version: str, previous: str) -> None:
        """champion ← ``version``; the replaced champion (``previous``) heads the history."""
        aliases = {
            alias: str(v)
            for alias, v in self._client.get_registered_model(model_name).aliases.items()
        }
        for alias, target in in_applying_order(promotion_moves(aliases, version)):
            if target is not None:
                self._client.set_registered_model_alias(model_name, alias, target)
            else:
                self._delete_alias(model_name, alias)
        log.info("champion promoted", extra={"version": version, "previous": previous})

    def _delete_alias(self, model_name: str, alias: str) -> None:
        try:
            self._client.delete_registered_model_alias(model_name, alias)
        except MlflowException as error:
            log.warning("alias not deleted", extra={"alias": alias, "error": repr(error)})

    def drop_challenger(self, model_name: str, version: str) -> None:
        """Delete ``challenger`` when it points at ``version`` (a newer one is left alone)."""
        aliases: dict[str, Any] = self._client.get_registered_model(model_name).aliases
        if str(aliases.get("challenger")) == version:
            self._delete_alias(model_name, "challenger")
