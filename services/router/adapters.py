"""Redis and MLflow implementations of the router's ports."""

from __future__ import annotations

import logging
from typing import Any, cast

from mlflow.exceptions import MlflowException
from redis.asyncio import Redis

from services.router.core import Experiment
from services.router.core.decision import ExperimentStats
from services.router.core.outcomes import (
    Closing,
    Label,
    LabelStatus,
    OutcomeWindow,
    PendingOutcome,
    decode_label,
    decode_pending,
    due_cutoffs,
    encode_label,
    encode_pending,
)
from services.router.core.report import LookPoint
from services.router.core.tally import REWARD_SHIFT_FIELD, stats_from_counters
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


#: Open a prediction's outcome window once: number it, index it by time and number.
_OPEN = """
if redis.call('EXISTS', KEYS[5]) == 1 or redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then
  return 0
end
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3] .. seq)
return 1
"""

#: Keep a label while its prediction's window is open ('late' once it has closed).
_LABEL = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'late' end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 'duplicate' end
local seq = redis.call('GET', KEYS[3]) or '0'
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. seq)
return 'open'
"""

#: Close windows: each request's increments are added only if it was still pending.
#: ARGV[3] is the reward shift the sums were taken around ('' when no reward closes).
_CLOSE = """
if ARGV[3] ~= '' then
  local stored = redis.call('HGET', KEYS[5], 'reward_shift')
  if stored and tonumber(stored) ~= tonumber(ARGV[3]) then return -1 end
  if not stored then redis.call('HSET', KEYS[5], 'reward_shift', ARGV[3]) end
end
local closed, i = 0, 4
while i <= #ARGV do
  local rid, n = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('ZREM', KEYS[1], rid) == 1 then
    redis.call('ZREM', KEYS[2], rid)
    redis.call('HDEL', KEYS[3], rid)
    redis.call('HDEL', KEYS[4], rid)
    redis.call('SET', ARGV[2] .. rid, '1', 'EX', ARGV[1])
    for j = i + 2, i + 2 * n, 2 do
      redis.call('HINCRBYFLOAT', KEYS[5], ARGV[j], ARGV[j + 1])
    end
    closed = closed + 1
  end
  i = i + 2 + 2 * n
end
return closed
"""


class RedisOutcomeTally:
    """Counters in one hash per experiment; a once-only marker per counted event.

    Open outcome windows live in a sorted set by prediction time and one by
    prediction number, with the prediction (and any label) in hashes; closing
    moves them into the counters in one script, so each is counted once.
    """

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
        self._open: Any = redis.register_script(_OPEN)
        self._label: Any = redis.register_script(_LABEL)
        self._close: Any = redis.register_script(_CLOSE)

    async def add(self, event_id: str, experiment_id: str, increments: dict[str, float]) -> bool:
        """Add ``increments`` to the experiment's counters unless ``event_id`` was counted."""
        args: list[Any] = [self._marker_ttl_s]
        for field, amount in increments.items():
            args += [field, repr(float(amount))]
        keys = [f"{self._prefix}counted:{event_id}", self._stats_key(experiment_id)]
        return bool(await self._add_once(keys=keys, args=args))

    async def stats(self, experiment_id: str) -> ExperimentStats:
        """The experiment's statistics from its counters, with its open windows counted."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._stats_key(experiment_id))
            pipe.zcard(self._key("pending", experiment_id))
            raw, open_outcomes = await pipe.execute()
        counters = {_text(k): float(v) for k, v in raw.items()}
        return stats_from_counters(counters, int(open_outcomes))

    async def open_outcome(self, experiment_id: str, pending: PendingOutcome) -> bool:
        """Open ``pending``'s window unless it is open or closed already."""
        prefix = encode_pending(pending).rsplit("|", 1)[0] + "|"
        keys = [
            self._key("seq", experiment_id),
            self._key("pending", experiment_id),
            self._key("pending-seq", experiment_id),
            self._key("outcome", experiment_id),
            self._closed_key(experiment_id, pending.request_id),
        ]
        args = [pending.request_id, repr(pending.predicted_at), prefix]
        return bool(await self._open(keys=keys, args=args))

    async def label(self, experiment_id: str, request_id: str, label: Label) -> LabelStatus:
        """Keep ``label`` for its window: ``open``, or ``late`` / ``duplicate`` (ignored)."""
        prefix = encode_label(label).rsplit("|", 1)[0] + "|"
        keys = [
            self._closed_key(experiment_id, request_id),
            self._key("label", experiment_id),
            self._key("seq", experiment_id),
        ]
        status = _text(await self._label(keys=keys, args=[request_id, prefix]))
        return cast(LabelStatus, status)

    async def due(
        self, experiment_id: str, window: OutcomeWindow, now: float, limit: int = 5000
    ) -> Closing:
        """Open windows that have closed by ``now``, with their labels and the reward shift."""
        seq_raw = await self._redis.get(self._key("seq", experiment_id))
        time_cutoff, seq_cutoff = due_cutoffs(now, int(seq_raw or 0), window)
        ids: list[Any] = list(
            await self._redis.zrangebyscore(
                self._key("pending", experiment_id), "-inf", time_cutoff, start=0, num=limit
            )
        )
        if seq_cutoff is not None:
            ids += await self._redis.zrangebyscore(
                self._key("pending-seq", experiment_id), "-inf", seq_cutoff, start=0, num=limit
            )
        request_ids = sorted({_text(i) for i in ids})
        if not request_ids:
            return Closing(outcomes=[], reward_shift=None)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._key("outcome", experiment_id), request_ids)
            pipe.hmget(self._key("label", experiment_id), request_ids)
            pipe.hget(self._stats_key(experiment_id), REWARD_SHIFT_FIELD)
            outcomes, labels, shift = await pipe.execute()
        closing = [
            (decode_pending(rid, _text(o)), None if lab is None else decode_label(_text(lab)))
            for rid, o, lab in zip(request_ids, outcomes, labels, strict=True)
            if o is not None
        ]
        return Closing(outcomes=closing, reward_shift=None if shift is None else float(shift))

    async def close(
        self,
        experiment_id: str,
        increments: dict[str, dict[str, float]],
        reward_shift: float | None,
    ) -> int:
        """Count each closed window's increments once; -1 if the reward shift changed meanwhile."""
        shift = "" if reward_shift is None else repr(reward_shift)
        args: list[Any] = [self._marker_ttl_s, self._closed_key(experiment_id, ""), shift]
        for request_id, counts in increments.items():
            args += [request_id, len(counts)]
            for field, amount in counts.items():
                args += [field, repr(float(amount))]
        keys = [
            self._key("pending", experiment_id),
            self._key("pending-seq", experiment_id),
            self._key("outcome", experiment_id),
            self._key("label", experiment_id),
            self._stats_key(experiment_id),
        ]
        return int(await self._close(keys=keys, args=args))

    def _key(self, kind: str, experiment_id: str) -> str:
        return f"{self._prefix}{kind}:{experiment_id}"

    def _closed_key(self, experiment_id: str, request_id: str) -> str:
        return f"{self._prefix}closed:{experiment_id}:{request_id}"

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
