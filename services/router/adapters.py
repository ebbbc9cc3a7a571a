"""Redis implementation of the router's experiment store."""

from __future__ import annotations

from redis.asyncio import Redis

from services.router.core import Experiment
from shared.events import ROUTING_STATE_KEY, ExperimentUpdated


class RedisExperimentStore:
    """One JSON value per model, plus the shared routing-table key the gateway reads."""

    def __init__(
        self,
        redis: Redis,
        prefix: str = "flywheel:router:experiment:",
        routing_key: str = ROUTING_STATE_KEY,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._routing_key = routing_key

    async def current(self, model_name: str) -> Experiment | None:
        """The stored experiment of ``model_name``, if any."""
        raw = await self._redis.get(self._prefix + model_name)
        return None if raw is None else Experiment.model_validate_json(raw)

    async def save(self, experiment: Experiment, update: ExperimentUpdated) -> None:
        """Write both keys in one MULTI/EXEC so readers never see them disagree."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._prefix + experiment.model_name, experiment.model_dump_json())
            pipe.set(self._routing_key, update.model_dump_json())
            await pipe.execute()

    async def routing_table(self) -> ExperimentUpdated | None:
        """The latest ExperimentUpdated the router stored."""
        raw = await self._redis.get(self._routing_key)
        return None if raw is None else ExperimentUpdated.model_validate_json(raw)
