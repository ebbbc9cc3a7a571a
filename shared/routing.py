"""The one reader of the routing documents the router keeps in Redis, one per model.

The router writes ``routing_state_key(model)`` (the JSON of that model's latest
``experiment-updated``) atomically with its experiment; the gateway reads it at
start-up, before the next event reaches it, and the monitor to know whether an
experiment runs.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.errors import DependencyUnavailableError
from shared.events import ExperimentUpdated, routing_state_key


class RoutingStateReader:
    """Reads one model's routing table."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def latest(self, model_name: str) -> ExperimentUpdated | None:
        """``model_name``'s routing table; None when it has none (no experiment ever ran)."""
        try:
            raw = await self._redis.get(routing_state_key(model_name))
        except (RedisError, OSError) as error:
            raise DependencyUnavailableError(f"routing state unreadable: {error!r}") from error
        return None if raw is None else ExperimentUpdated.model_validate_json(raw)

    async def running_experiment(self, model_name: str) -> str | None:
        """The id of ``model_name``'s running experiment, if one runs."""
        table = await self.latest(model_name)
        return table.experiment_id if table is not None and table.status == "running" else None
