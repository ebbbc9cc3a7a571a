"""Which events a service has handled: Redis markers, so a redelivered event is a no-op."""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis


class IdempotencyStore(Protocol):
    """Remembers which event ids a service has handled."""

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was handled already."""

    async def mark(self, event_id: str) -> None:
        """Remember that ``event_id`` was handled."""


class ProcessedEvents:
    """Redis markers of handled event ids, so a redelivered event is a no-op."""

    def __init__(self, redis: Redis, service: str, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = f"flywheel:{service}:done:"
        self._ttl_s = ttl_s

    async def seen(self, event_id: str) -> bool:
        """Whether this service already handled ``event_id``."""
        return bool(await self._redis.exists(self._prefix + event_id))

    async def mark(self, event_id: str) -> None:
        """Remember that ``event_id`` was handled."""
        await self._redis.set(self._prefix + event_id, b"1", ex=self._ttl_s)

    async def seen_many(self, event_ids: list[str]) -> set[str]:
        """The ids among ``event_ids`` already handled: one round trip for a whole batch."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.exists(self._prefix + event_id)
            found = await pipe.execute()
        return {e for e, hit in zip(event_ids, found, strict=True) if hit}

    async def mark_many(self, event_ids: list[str]) -> None:
        """Remember a whole batch of handled ids in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.set(self._prefix + event_id, b"1", ex=self._ttl_s)
            await pipe.execute()


class NothingProcessed:
    """Idempotency for broadcast handlers: none, they converge by nature."""

    async def seen(self, event_id: str) -> bool:
        return False

    async def mark(self, event_id: str) -> None:
        return None
