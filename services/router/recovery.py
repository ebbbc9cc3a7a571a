"""Notices a Redis that came back without the router's state, and rebuilds what it can.

A marker key lives beside the router's state. The append-only file keeps it
across restarts; when it is missing, Redis lost its data: every registered model
that has no stored state gets its routing table rebuilt from MLflow's aliases
(``core.recovery``), a lost experiment is counted in
``router_state_lost_total{model_name}`` (alert ``RouterStateLost``) and logged as
an error, and ``/readyz`` is 503 until the rebuild is done. The marker is one key
for all models (used alone, so it needs no hash tag): Redis loses its data
whole, not one model's. This module is the guard and
its one MLflow adapter (an adapter module of its own, beside ``adapters.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from services.router.core.recovery import STATE_LOST, rebuilt_state
from services.router.ports import ExperimentStore
from shared.events import ExperimentUpdated
from shared.messaging import EventPublisher
from shared.mlflow_client import mlflow_client
from shared.state_marker import MarkerGuard

log = logging.getLogger(__name__)

#: Written once the router's state is known to be whole; gone only when Redis lost its data.
STATE_MARKER_KEY = "flywheel:router:state-marker"
_MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}

AliasReader = Callable[[str], tuple[str | None, str | None]]
"""Blocking: a model's (champion, challenger) versions in the registry."""

ModelNames = Callable[[], Awaitable[list[str]]]
"""Every registered model (``ModelCatalog.names``)."""


def mlflow_alias_reader(tracking_uri: str) -> AliasReader:
    """Read ``champion`` and ``challenger`` from MLflow (None where unset or no such model)."""

    def read(model_name: str) -> tuple[str | None, str | None]:
        client = mlflow_client(tracking_uri)
        try:
            aliases = client.get_registered_model(model_name).aliases
        except MlflowException as error:
            if error.error_code in _MISSING:
                return None, None
            raise
        found = {alias: str(version) for alias, version in aliases.items()}
        return found.get("champion"), found.get("challenger")

    return read


class StateGuard:
    """Checks the marker at start and every ``period_s``; rebuilds and alarms on a loss."""

    def __init__(
        self,
        redis: Redis,
        store: ExperimentStore,
        aliases: AliasReader,
        publisher: EventPublisher,
        registry: CollectorRegistry,
        models: ModelNames,
        period_s: float = 5.0,
    ) -> None:
        self._store, self._aliases = store, aliases
        self._marker = MarkerGuard(
            redis, STATE_MARKER_KEY, self._recover, "router-state-guard", period_s
        )
        self._publisher, self._models = publisher, models
        self._lost = Counter(
            "router_state_lost_total",
            "Times Redis came back without the router's state while an experiment ran "
            "(it cannot be resumed: its outcome counts are gone).",
            ["model_name"],
            registry=registry,
        )
        self._last_rebuild: str | None = None

    async def start(self) -> None:
        """Check once in the background now, then every ``period_s``."""
        await self._marker.start()

    async def stop(self) -> None:
        """Stop checking."""
        await self._marker.stop()

    async def ready(self) -> bool:
        """Readiness: the state is whole (the marker is there)."""
        return await self._marker.marked()

    def details(self) -> dict[str, object]:
        """For ``/readyz``: what the last rebuild did, if any happened."""
        return {"state_rebuilt": self._last_rebuild}

    async def check(self) -> None:
        """Do nothing while the marker is there; else rebuild from MLflow and set it."""
        await self._marker.check()

    async def _recover(self) -> None:
        for model_name in await self._models():
            # A model with state kept it (an older Redis without the marker): leave it be.
            if await self._store.current(model_name) is None:
                await self._rebuild(model_name)

    async def _rebuild(self, model_name: str) -> None:
        champion, challenger = await asyncio.to_thread(self._aliases, model_name)
        state = rebuilt_state(model_name, champion, challenger, datetime.now(UTC))
        if state is None:
            return  # nothing registered: a first start, nothing was lost
        update = ExperimentUpdated(
            producer="router",
            experiment_id=state.experiment_id,
            model_name=state.model_name,
            status=state.status,
            champion_version=state.champion_version,
            challenger_share=0.0,
            reason=",".join(state.reasons),
        )
        await self._publisher.publish(update)
        await self._store.save(state.model_copy(update={"last_event_id": update.event_id}), update)
        self._last_rebuild = f"{update.occurred_at.isoformat()} {model_name}: {update.reason}"
        if STATE_LOST in state.reasons:
            self._lost.labels(model_name=model_name).inc()
            log.error(
                "Redis lost the router's state: the experiment is gone, the champion serves alone",
                extra={"model": model_name, "champion": champion, "challenger": challenger},
            )
        else:
            log.warning(
                "routing table rebuilt from the registry",
                extra={"model": model_name, "champion": champion},
            )
