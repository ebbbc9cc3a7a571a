"""Notices a Redis that came back without the gateway's state; nothing of it can be rebuilt.

Prediction records (looked up when feedback arrives) and the feature store live
only in Redis. When the marker key beside them (``shared.state_marker``) is
missing after the gateway has served a model, Redis lost them: feedback for an
earlier prediction now answers 404 ("unknown"), and lookups by entity find no
features. The gateway keeps serving (predictions need neither), counts the loss
in ``gateway_state_lost_total`` (alert ``RedisStateLost``) and logs an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from shared.state_marker import MarkerGuard

log = logging.getLogger(__name__)

#: Written once the gateway's state is known to be whole; gone only when Redis lost its data.
STATE_MARKER_KEY = "flywheel:gateway:state-marker"


def marker_key(model_name: str) -> str:
    """The marker of one model's state: each model's gateway notices its own loss."""
    return f"{STATE_MARKER_KEY}:{model_name}"


Served = Callable[[], bool]
"""Whether a model is loaded: predictions were (or are being) recorded."""


class GatewayStateGuard:
    """Checks the marker at start and every ``period_s``; counts a loss, never blocks serving."""

    def __init__(
        self,
        redis: Redis,
        served: Served,
        registry: CollectorRegistry,
        model_name: str,
        period_s: float = 5.0,
    ) -> None:
        self._served, self._model_name = served, model_name
        self._marker = MarkerGuard(
            redis, marker_key(model_name), self._recover, "gateway-state-guard", period_s
        )
        self._lost = Counter(
            "gateway_state_lost_total",
            "Times Redis came back without the gateway's prediction records and feature store "
            "(they cannot be rebuilt: feedback on earlier predictions answers 404).",
            ["model_name"],
            registry=registry,
        )
        self._checked = False

    async def start(self) -> None:
        """Check once in the background now, then every ``period_s``."""
        await self._marker.start()

    async def stop(self) -> None:
        """Stop checking."""
        await self._marker.stop()

    async def check(self) -> None:
        """Do nothing while the marker is there; else count a loss if there was state."""
        await self._marker.check()
        self._checked = True

    async def _recover(self) -> None:
        # A marker missing at a first check with no model loaded is a first start; one
        # missing after a check, or while a model serves, means predictions were recorded.
        if not (self._checked or self._served()):
            return
        self._lost.labels(model_name=self._model_name).inc()
        log.error(
            "Redis lost the gateway's prediction records and feature store: feedback on "
            "earlier predictions answers 404; predictions go on",
            extra={"model": self._model_name},
        )
