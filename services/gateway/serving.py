"""Keeps one model's pool in step with its routing table and the registry's aliases.

Loading is blocking MLflow work, so it runs in a worker thread; a version that
fails to load is logged and the model serving that role keeps serving. Refreshes
are serialised so an older table can never be swapped in after a newer one.
Each served model has a refresher of its own (``services.gateway.fleet``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime

from services.gateway.metrics import GatewayMetrics
from services.gateway.pool import LoadedModel, ModelPool, RoutingTable, ServingSnapshot
from services.gateway.ports import ModelRegistry, RoutingStateSource
from shared.errors import DependencyUnavailableError
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
        spec: ModelSpec,
    ) -> None:
        self.spec = spec
        """The model's spec: how the versions it loads answer (its task) and are warmed up."""
        self._pool = pool
        self._registry = registry
        self._routing_state = routing_state
        self._model_name = model_name
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._applied_at: datetime | None = None
        self.last_error: str | None = None
        """Why the latest resolution or load failed (None once a champion serves)."""
        self.nothing_to_serve = False
        """True once a refresh found no champion named (a fresh registry): readiness then
        does not wait for a model. False before any resolution, or while MLflow is away."""

    async def load_initial(self) -> None:
        """Serve the router's routing table when the registry's aliases agree with it.

        Otherwise (no table, a table Redis lost or kept from before an operator's
        promote/rollback) serve the aliases with no split: the gateway never routes
        to an experiment the registry does not know.
        """
        try:
            table = await self._routing_state.latest(self._model_name)
        except DependencyUnavailableError as error:
            # Redis away: keep what serves (its split included); with nothing served yet,
            # the aliases alone (keep_split with nothing loaded gives no split).
            log.warning("routing state unreadable", extra={"error": repr(error)})
            versions = await self._aliases()
            if versions is not None and self._pool.snapshot.champion is None:
                await self._serve_aliases(versions, keep_split=True)
            return
        versions = await self._aliases()
        if versions is None:
            return  # nothing to check against, nothing loadable: keep what serves
        if table is not None and agrees_with_aliases(table, versions):
            await self.apply_experiment(table)
        else:
            if table is not None:
                log.warning(
                    "routing table disagrees with the registry; serving its aliases alone",
                    extra={"experiment_id": table.experiment_id, "aliases": versions},
                )
                self._metrics.routing_rejected.labels(self._model_name).inc()
            await self._serve_aliases(versions, keep_split=False)

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

    async def follow_aliases(self, keep_split: bool = True) -> None:
        """Re-resolve ``champion``/``challenger`` in the registry and serve those versions.

        ``keep_split=False`` (an operator's promote or rollback) ends any split at once,
        whether or not the router has caught up.
        """
        versions = await self._aliases()
        if versions is not None:
            await self._serve_aliases(versions, keep_split)

    async def _aliases(self) -> dict[Variant, str | None] | None:
        try:
            return await asyncio.to_thread(self._registry.aliases, self._model_name)
        except Exception as error:
            log.error(
                "aliases unresolvable", extra={"model": self._model_name, "error": repr(error)}
            )
            self._metrics.model_load_errors.labels(self._model_name, "aliases").inc()
            self.last_error = f"aliases unresolvable: {type(error).__name__}: {error}"
            return None

    async def _serve_aliases(self, versions: dict[Variant, str | None], keep_split: bool) -> None:
        current = self._pool.snapshot
        challenger = versions["challenger"]
        # Without an experiment a challenger is loaded but gets no traffic.
        keep = (
            keep_split
            and current.challenger is not None
            and current.challenger.version == challenger
        )
        routing = current.routing if keep else RoutingTable(None, 0.0)
        await self._refresh(versions["champion"], challenger, routing)

    async def _refresh(
        self, champion: str | None, challenger: str | None, routing: RoutingTable
    ) -> None:
        async with self._lock:
            self.last_error = None  # what this refresh fails at, if anything, is set below
            current = self._pool.snapshot
            wanted = ServingSnapshot(
                champion=await self._model(current, "champion", champion),
                challenger=await self._model(current, "challenger", challenger),
                routing=routing,
            )
            snapshot = all_or_nothing(current, wanted, champion, challenger)
            # What was named, loaded or not: a champion that failed to load is still awaited.
            self.nothing_to_serve = champion is None
            if snapshot is None:
                log.error(
                    "routing table refused", extra={"champion": champion, "challenger": challenger}
                )
                return
            self._pool.swap(snapshot)
            if snapshot != current:  # the periodic resync mostly confirms what serves
                log.info("serving table swapped", extra={"models": snapshot.describe()})

    async def _model(
        self, current: ServingSnapshot, role: Variant, version: str | None
    ) -> LoadedModel | None:
        if version is None:
            return None
        reusable = current.loaded_version(version)
        if reusable is not None:
            return reusable
        spec = self.spec
        try:
            model = await asyncio.to_thread(self._registry.load, self._model_name, version, spec)
            # The task is read once here: requests never ask the spec which way to score.
            loaded = LoadedModel(self._model_name, version, model, spec.task)
            # Before the swap: its first requests would otherwise pay the model's
            # first-call costs, and a small challenger arm shows them as its p95.
            await asyncio.to_thread(loaded.warm_up, spec)
        except Exception as error:
            log.error(
                "model load failed; the previous table keeps serving",
                extra={
                    "model": self._model_name,
                    "role": role,
                    "version": version,
                    "error": repr(error),
                },
            )
            self._metrics.model_load_errors.labels(self._model_name, role).inc()
            self.last_error = f"{role} version {version}: {type(error).__name__}: {error}"
            return None
        log.info(
            "model loaded", extra={"model": self._model_name, "role": role, "version": version}
        )
        return loaded


def all_or_nothing(
    current: ServingSnapshot, wanted: ServingSnapshot, champion: str | None, challenger: str | None
) -> ServingSnapshot | None:
    """What to serve once the versions a table names were loaded; None keeps ``current``.

    A table is one decision: a version that did not load (a broken artifact, or a forged
    event naming versions that do not exist) leaves the previous table serving whole, its
    experiment id and split included. Two exceptions, where no traffic decision rides on
    what failed: a table without a split takes its champion (a promotion is not held up by
    a challenger that gets nothing anyway), and a gateway that serves nothing yet takes a
    champion that loaded, alone and outside any split.
    """
    champion_loaded = champion is None or wanted.champion is not None
    if champion_loaded and (challenger is None or wanted.challenger is not None):
        return wanted
    if champion_loaded and wanted.routing.challenger_share == 0.0:
        return replace(wanted, challenger=None)
    if current.champion is None and wanted.champion is not None:
        return ServingSnapshot(champion=wanted.champion)
    return None


def agrees_with_aliases(table: ExperimentUpdated, aliases: dict[Variant, str | None]) -> bool:
    """Whether the registry's aliases name the versions ``table`` serves.

    A running experiment needs both aliases to match; any other state its champion.

    >>> from shared.events import ExperimentUpdated
    >>> t = ExperimentUpdated(producer="router", experiment_id="e", model_name="m",
    ...     status="running", champion_version="4", challenger_version="5", challenger_share=0.05)
    >>> agrees_with_aliases(t, {"champion": "4", "challenger": "5"})
    True
    >>> agrees_with_aliases(t, {"champion": "3", "challenger": "5"})  # rolled back by a person
    False
    """
    if aliases["champion"] != table.champion_version:
        return False
    return table.status != "running" or aliases["challenger"] == table.challenger_version
