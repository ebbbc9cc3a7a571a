"""A marker key beside a service's Redis state, to notice a Redis that lost its data.

Redis keeps its data across restarts (append-only file), so a marker written once
the state is known to be whole stays until Redis loses everything: a lost data
directory, a ``FLUSHALL``, a volume removed by ``flywheel down``. A guard checks
the marker at start and every ``period_s``; when it is missing it runs the
service's ``recover`` (rebuild what a durable source holds, count and log what is
lost) and writes the marker again. The router, the trainer and the gateway each
wrap one in their ``recovery`` module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from redis.asyncio import Redis

log = logging.getLogger(__name__)

Recover = Callable[[], Awaitable[None]]
"""Runs when the marker is missing: rebuild, count, log; raise to try again later."""


class MarkerGuard:
    """Runs ``recover`` whenever ``key`` is missing, then writes the key."""

    def __init__(
        self, redis: Redis, key: str, recover: Recover, name: str, period_s: float = 5.0
    ) -> None:
        self._redis, self._key, self._recover = redis, key, recover
        self._name, self._period_s = name, period_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Check once in the background now, then every ``period_s``."""
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def marked(self) -> bool:
        """The marker is there (False when Redis cannot say)."""
        try:
            return bool(await self._redis.exists(self._key))
        except Exception:
            return False

    async def check(self) -> None:
        """Do nothing while the marker is there; else recover, then set it."""
        if await self._redis.exists(self._key):
            return
        await self._recover()
        await self._redis.set(self._key, datetime.now(UTC).isoformat())

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as error:  # Redis or the durable source down: try again
                log.warning("state not checked", extra={"guard": self._name, "error": repr(error)})
            await asyncio.sleep(self._period_s)
