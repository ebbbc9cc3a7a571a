"""Keeps the model pool in step with the routing table and the registry's aliases.

Loading is blocking MLflow work, so it runs in a worker thread; a version that
fails to load is logged and the model serving that role keeps serving. Refreshes
are serialised so an older table can never be swapped in after a newer one.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from services.gateway.metrics import GatewayMetrics
from services.gateway.pool import LoadedModel, ModelPool, RoutingTable, ServingSnapshot
from services.gateway.ports import ModelRegistry, RoutingStateSource
from shared.events import ExperimentUpdated, Variant
from shared.spec import ModelSpec

log = logging.getLogger(__name__)


class ServingRefresher:
    """Loads the versions a routing table names, then swaps the pool's snapshot."""

    def __init__(
        self,
        pool: ModelPool,
        registry: ModelRegistry,
        routing_state: RoutingStateSource,
        model_name: str,
        metrics: GatewayMetrics,
        spec: ModelSpec | None = None,
    ) -> None:
        self._spec = spec
        self._pool = pool
        self._registry = registry
        self._routing_state = routing_state
        self._model_name = model_name
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._applied_at: datetime | None = None

    async def load_initial(self) -> None:
        """Serve the router's routing table when there is one, else the registry's aliases."""
        table = await self._routing_state.latest()
        if table is not None and table.model_name == self._model_name:
            await self.apply_experiment(table)
        else:
            await self.follow_aliases()

    async def apply_experiment(self, update: ExperimentUpdated) -> None:
        """Load the versions ``update`` names, then serve them under its split."""
        if update.model_name != self._model_name or self._is_stale(update):
            return
        self._applied_at = update.occurred_at
        running = update.status == "running" and update.challenger_version is not None
        routing = RoutingTable(
            experiment_id=update.experiment_id,
            challenger_share=update.challenger_share if running else 0.0,
        )
        challenger = update.challenger_version if running else None
        await self._refresh(update.champion_version, challenger, routing)

    def _is_stale(self, update: ExperimentUpdated) -> bool:
        # A fresh consumer group replays the topic from the start; the table read at
        # start-up is newer than those, so skip them rather than load every old version.
        stale = self._applied_at is not None and update.occurred_at < self._applied_at
        if stale:
            log.info("stale routing table skipped", extra={"experiment_id": update.experiment_id})
        return stale

    async def follow_aliases(self) -> None:
        """Re-resolve ``champion``/``challenger`` in the registry and serve those versions."""
        try:
            versions = await asyncio.to_thread(self._registry.aliases, self._model_name)
        except Exception as error:
            log.error("aliases unresolvable", extra={"error": repr(error)})
            self._metrics.model_load_errors.labels(role="aliases").inc()
            return
        current = self._pool.snapshot
        challenger = versions["challenger"]
        # Without an experiment a challenger is loaded but gets no traffic.
        keep = current.challenger is not None and current.challenger.version == challenger
        routing = current.routing if keep else RoutingTable(current.routing.experiment_id, 0.0)
        await self._refresh(versions["champion"], challenger, routing)

    async def _refresh(
        self, champion: str | None, challenger: str | None, routing: RoutingTable
    ) -> None:
        async with self._lock:
            current = self._pool.snapshot
            snapshot = ServingSnapshot(
                champion=await self._model(current, "champion", champion),
                challenger=await self._model(current, "challenger", challenger),
                routing=routing,
            )
            self._pool.swap(snapshot)
            log.info("serving table swapped", extra={"models": snapshot.describe()})

    async def _model(
        self, current: ServingSnapshot, role: Variant, version: str | None
    ) -> LoadedModel | None:
        if version is None:
            return None
        reusable = current.loaded_version(version)
        if reusable is not None:
            return reusable
        try:
            model = await asyncio.to_thread(self._registry.load, self._model_name, version)
            loaded = LoadedModel(self._model_name, version, model)
            if self._spec is not None:
                # Before the swap: its first requests would otherwise pay the model's
                # first-call costs, and a small challenger arm shows them as its p95.
                await asyncio.to_thread(loaded.warm_up, self._spec)
        except Exception as error:
            log.error(
                "model load failed; the previous model keeps serving",
                extra={"role": role, "version": version, "error": repr(error)},
            )
            self._metrics.model_load_errors.labels(role=role).inc()
            return current.model_for(role)
        log.info("model loaded", extra={"role": role, "version": version})
        return loaded
