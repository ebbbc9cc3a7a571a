"""Redis and MLflow implementations of the router's ports.

Every key about a model carries its hash tag (``model_key("router", model, ...)``,
``routing_state_key(model)``), so each multi-key step on one model (the MULTI of
``save``, every script of the tally) touches one Redis Cluster slot. The one key
of no model, the experiment index, is only ever used alone. Redis failures leave
as ``DependencyUnavailableError`` (retried by the consumer, 503 on a route).
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

from mlflow.exceptions import MlflowException
from redis.asyncio import Redis
from redis.exceptions import RedisError

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
from services.router.core.tally import LOSS_SHIFT_FIELD, REWARD_SHIFT_FIELD, stats_from_counters
from shared.aliases import in_applying_order, promotion_moves
from shared.errors import DependencyUnavailableError
from shared.events import ExperimentUpdated, model_key, routing_state_key
from shared.mlflow_client import mlflow_client

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Experiment id → model name, for the reads that know only the id (reports, listings).
EXPERIMENT_INDEX_KEY = "flywheel:router:experiment-models"


def _redis_outage(
    method: Callable[P, Awaitable[T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis errors leave as the shared outage error, never as ``RedisError``."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as error:
            raise DependencyUnavailableError(f"router state unavailable: {error!r}") from error

    return call


def _router_key(model_name: str, kind: str) -> str:
    return model_key("router", model_name, kind)


class RedisExperimentStore:
    """Per model: its current experiment, each experiment by id, and its routing table."""

    def __init__(self, redis: Redis, index_key: str = EXPERIMENT_INDEX_KEY) -> None:
        self._redis = redis
        self._index = index_key

    @_redis_outage
    async def current(self, model_name: str) -> Experiment | None:
        """The stored experiment of ``model_name``, if any."""
        raw = await self._redis.get(_router_key(model_name, "experiment"))
        return None if raw is None else Experiment.model_validate_json(raw)

    @_redis_outage
    async def get(self, model_name: str, experiment_id: str) -> Experiment | None:
        """``model_name``'s experiment with this id, if stored."""
        raw = await self._redis.get(_by_id(model_name, experiment_id))
        return None if raw is None else Experiment.model_validate_json(raw)

    @_redis_outage
    async def find(self, experiment_id: str) -> Experiment | None:
        """The experiment with this id, whichever model it belongs to."""
        model = await self._redis.hget(self._index, experiment_id)
        return None if model is None else await self.get(_text(model), experiment_id)

    @_redis_outage
    async def all(self, model_name: str | None = None) -> list[Experiment]:
        """Every stored experiment (of ``model_name`` when given), newest first."""
        ids_by_model: dict[str, list[str]] = defaultdict(list)
        for experiment_id, model in (await self._redis.hgetall(self._index)).items():
            if model_name is None or _text(model) == model_name:
                ids_by_model[_text(model)].append(_text(experiment_id))
        found: list[Experiment] = []
        for model, ids in ids_by_model.items():  # one MGET per model: one slot each
            raws = await self._redis.mget([_by_id(model, i) for i in ids])
            found += [Experiment.model_validate_json(r) for r in raws if r is not None]
        return sorted(found, key=lambda e: e.opened_at, reverse=True)

    @_redis_outage
    async def save(self, experiment: Experiment, update: ExperimentUpdated | None) -> None:
        """Write the model's keys in one MULTI/EXEC so readers never see them disagree."""
        model, raw = experiment.model_name, experiment.model_dump_json()
        # Indexed first, alone (another slot): a stored experiment is always findable, and
        # an index entry whose MULTI never ran reads as no experiment.
        await self._redis.hset(self._index, experiment.experiment_id, model)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(_router_key(model, "experiment"), raw)
            pipe.set(_by_id(model, experiment.experiment_id), raw)
            if update is not None:
                pipe.set(routing_state_key(model), update.model_dump_json())
            await pipe.execute()

    @_redis_outage
    async def routing_table(self, model_name: str) -> ExperimentUpdated | None:
        """The latest ExperimentUpdated the router stored for ``model_name``."""
        raw = await self._redis.get(routing_state_key(model_name))
        return None if raw is None else ExperimentUpdated.model_validate_json(raw)


def _by_id(model_name: str, experiment_id: str) -> str:
    return _router_key(model_name, f"experiment:{experiment_id}")


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
#: ARGV[3] and ARGV[4] are the reward and loss shifts the sums were taken around ('' when
#: none closes); a shift another close stored first refuses the whole batch (-1).
_CLOSE = """
local shifts = {{'reward_shift', ARGV[3]}, {'loss_shift', ARGV[4]}}
for _, shift in ipairs(shifts) do
  if shift[2] ~= '' then
    local stored = redis.call('HGET', KEYS[5], shift[1])
    if stored and tonumber(stored) ~= tonumber(shift[2]) then return -1 end
  end
end
for _, shift in ipairs(shifts) do
  if shift[2] ~= '' then redis.call('HSETNX', KEYS[5], shift[1], shift[2]) end
end
local closed, i = 0, 5
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
    moves them into the counters in one script, so each is counted once. Every key
    of an experiment carries its model's hash tag, the markers the scripts build
    from a prefix included.
    """

    def __init__(
        self, redis: Redis, marker_ttl_s: int = 14 * 24 * 3600, max_looks: int = 2000
    ) -> None:
        self._redis = redis
        self._marker_ttl_s = marker_ttl_s
        self._max_looks = max_looks
        self._add_once: Any = redis.register_script(_ADD_ONCE)
        self._open: Any = redis.register_script(_OPEN)
        self._label: Any = redis.register_script(_LABEL)
        self._close: Any = redis.register_script(_CLOSE)

    @_redis_outage
    async def add(
        self, model_name: str, experiment_id: str, event_id: str, increments: dict[str, float]
    ) -> bool:
        """Add ``increments`` to the experiment's counters unless ``event_id`` was counted."""
        args: list[Any] = [self._marker_ttl_s]
        for field, amount in increments.items():
            args += [field, repr(float(amount))]
        keys = [
            _router_key(model_name, f"counted:{event_id}"),
            _key(model_name, "stats", experiment_id),
        ]
        return bool(await self._add_once(keys=keys, args=args))

    @_redis_outage
    async def stats(self, model_name: str, experiment_id: str) -> ExperimentStats:
        """The experiment's statistics from its counters, with its open windows counted."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(_key(model_name, "stats", experiment_id))
            pipe.zcard(_key(model_name, "pending", experiment_id))
            raw, open_outcomes = await pipe.execute()
        counters = {_text(k): float(v) for k, v in raw.items()}
        return stats_from_counters(counters, int(open_outcomes))

    @_redis_outage
    async def open_outcome(
        self, model_name: str, experiment_id: str, pending: PendingOutcome
    ) -> bool:
        """Open ``pending``'s window unless it is open or closed already."""
        prefix = encode_pending(pending).rsplit("|", 1)[0] + "|"
        keys = [
            _key(model_name, "seq", experiment_id),
            _key(model_name, "pending", experiment_id),
            _key(model_name, "pending-seq", experiment_id),
            _key(model_name, "outcome", experiment_id),
            _closed_key(model_name, experiment_id, pending.request_id),
        ]
        args = [pending.request_id, repr(pending.predicted_at), prefix]
        return bool(await self._open(keys=keys, args=args))

    @_redis_outage
    async def label(
        self, model_name: str, experiment_id: str, request_id: str, label: Label
    ) -> LabelStatus:
        """Keep ``label`` for its window: ``open``, or ``late`` / ``duplicate`` (ignored)."""
        prefix = encode_label(label).rsplit("|", 1)[0] + "|"
        keys = [
            _closed_key(model_name, experiment_id, request_id),
            _key(model_name, "label", experiment_id),
            _key(model_name, "seq", experiment_id),
        ]
        status = _text(await self._label(keys=keys, args=[request_id, prefix]))
        return cast(LabelStatus, status)

    @_redis_outage
    async def due(
        self,
        model_name: str,
        experiment_id: str,
        window: OutcomeWindow,
        now: float,
        limit: int = 5000,
    ) -> Closing:
        """Open windows that have closed by ``now``, with their labels and the stored shifts."""
        seq_raw = await self._redis.get(_key(model_name, "seq", experiment_id))
        time_cutoff, seq_cutoff = due_cutoffs(now, int(seq_raw or 0), window)
        ids: list[Any] = list(
            await self._redis.zrangebyscore(
                _key(model_name, "pending", experiment_id), "-inf", time_cutoff, start=0, num=limit
            )
        )
        if seq_cutoff is not None:
            ids += await self._redis.zrangebyscore(
                _key(model_name, "pending-seq", experiment_id),
                "-inf",
                seq_cutoff,
                start=0,
                num=limit,
            )
        request_ids = sorted({_text(i) for i in ids})
        if not request_ids:
            return Closing(outcomes=[], reward_shift=None)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(_key(model_name, "outcome", experiment_id), request_ids)
            pipe.hmget(_key(model_name, "label", experiment_id), request_ids)
            pipe.hmget(
                _key(model_name, "stats", experiment_id), [REWARD_SHIFT_FIELD, LOSS_SHIFT_FIELD]
            )
            outcomes, labels, (shift, loss_shift) = await pipe.execute()
        closing = [
            (decode_pending(rid, _text(o)), None if lab is None else decode_label(_text(lab)))
            for rid, o, lab in zip(request_ids, outcomes, labels, strict=True)
            if o is not None
        ]
        return Closing(
            outcomes=closing,
            reward_shift=None if shift is None else float(shift),
            loss_shift=None if loss_shift is None else float(loss_shift),
        )

    @_redis_outage
    async def close(
        self,
        model_name: str,
        experiment_id: str,
        increments: dict[str, dict[str, float]],
        reward_shift: float | None,
        loss_shift: float | None = None,
    ) -> int:
        """Count each closed window's increments once; -1 if a shift changed meanwhile."""
        shift = "" if reward_shift is None else repr(reward_shift)
        lshift = "" if loss_shift is None else repr(loss_shift)
        # The script builds each closed marker from this prefix: it carries the model's
        # hash tag, so those keys share the slot of the declared ones.
        marker_prefix = _closed_key(model_name, experiment_id, "")
        args: list[Any] = [self._marker_ttl_s, marker_prefix, shift, lshift]
        for request_id, counts in increments.items():
            args += [request_id, len(counts)]
            for field, amount in counts.items():
                args += [field, repr(float(amount))]
        keys = [
            _key(model_name, kind, experiment_id)
            for kind in ("pending", "pending-seq", "outcome", "label", "stats")
        ]
        return int(await self._close(keys=keys, args=args))

    @_redis_outage
    async def append_look(self, model_name: str, experiment_id: str, point: LookPoint) -> None:
        """Append one look's summary (the oldest go beyond ``max_looks``)."""
        key = _key(model_name, "looks", experiment_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, point.model_dump_json())
            pipe.ltrim(key, -self._max_looks, -1)
            await pipe.execute()

    @_redis_outage
    async def history(self, model_name: str, experiment_id: str) -> list[LookPoint]:
        """Every kept look, oldest first."""
        raws = await self._redis.lrange(_key(model_name, "looks", experiment_id), 0, -1)
        return [LookPoint.model_validate_json(r) for r in raws]


def _key(model_name: str, kind: str, experiment_id: str) -> str:
    return _router_key(model_name, f"{kind}:{experiment_id}")


def _closed_key(model_name: str, experiment_id: str, request_id: str) -> str:
    return _router_key(model_name, f"closed:{experiment_id}:{request_id}")


#: Keys of the releases before many models: one routing table, experiments by id.
_LEGACY = "flywheel:router:"
_LEGACY_ROUTING_KEY = "flywheel:routing:current"
_TALLY_KINDS = ("stats", "pending", "pending-seq", "outcome", "label", "seq", "looks")


@_redis_outage
async def adopt_single_model_keys(
    redis: Redis, model_name: str, index_key: str = EXPERIMENT_INDEX_KEY
) -> int:
    """Move the keys a single-model router left to ``model_name``'s hash-tagged ones.

    Those releases ran one Redis, never a cluster, so ``RENAME`` across slots is
    fine. The old current-experiment key goes last: a start interrupted halfway
    adopts the rest next time; once it is gone this is a no-op. Once-only markers
    are left to expire (the consumer's idempotency store already guards
    redeliveries). Returns how many experiments were moved.
    """
    current = await redis.get(f"{_LEGACY}experiment:{model_name}")
    if current is None:
        return 0
    legacy_index = f"{_LEGACY}experiment:index"
    moved = 0
    for member in await redis.zrange(legacy_index, 0, -1):
        experiment_id = _text(member)
        raw = await redis.get(f"{_LEGACY}experiment:by-id:{experiment_id}")
        if raw is None or Experiment.model_validate_json(raw).model_name != model_name:
            continue
        await redis.hset(index_key, experiment_id, model_name)
        await redis.set(_by_id(model_name, experiment_id), raw)
        for kind in _TALLY_KINDS:
            old = f"{_LEGACY}{kind}:{experiment_id}"
            if await redis.exists(old):
                await redis.rename(old, _key(model_name, kind, experiment_id))
        await redis.delete(f"{_LEGACY}experiment:by-id:{experiment_id}")
        await redis.zrem(legacy_index, experiment_id)
        moved += 1
    table = await redis.get(_LEGACY_ROUTING_KEY)
    if table is not None and ExperimentUpdated.model_validate_json(table).model_name == model_name:
        await redis.set(routing_state_key(model_name), table, nx=True)
        await redis.delete(_LEGACY_ROUTING_KEY)
    await redis.set(_router_key(model_name, "experiment"), current, nx=True)
    await redis.delete(f"{_LEGACY}experiment:{model_name}")
    log.warning(
        "single-model router keys adopted (deprecated layout)",
        extra={"model": model_name, "experiments": moved},
    )
    return moved


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
