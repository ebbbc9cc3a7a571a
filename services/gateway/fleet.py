"""Every model the gateway serves: one pool and one refresher per model, memory bounded.

A model is *held* while its pool, refresher and loaded versions are in memory.
Models load in the background: every registered one at start-up (up to the
limit), a newly registered one when its ``model-registered`` event arrives, any
other on its first request. Beyond ``max_loaded`` held models the least
recently requested one is unloaded (counted in ``gateway_model_unloads_total``);
its next request loads it again and waits for that load a bounded time (then
503 with Retry-After while the load goes on). The default model is never
unloaded: the unprefixed routes and readiness are its.

A model that fails to load is held with its error and blocks nothing: each
model's loads, routing tables and alias events touch its own state only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from services.gateway.core import ModelState
from services.gateway.metrics import GatewayMetrics
from services.gateway.pool import ModelPool
from services.gateway.ports import ModelRegistry, RoutingStateSource
from services.gateway.serving import ServingRefresher
from shared.catalog import ModelCatalog
from shared.events import ExperimentUpdated, ModelRegistered
from shared.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One held model: its spec, the snapshot serving it and what keeps that current."""

    name: str
    spec: ModelSpec
    pool: ModelPool
    refresher: ServingRefresher
    loading: asyncio.Task[None] | None = field(default=None, repr=False)

    def use_spec(self, spec: ModelSpec) -> None:
        """Validate requests and warm up versions with ``spec`` from now on."""
        self.spec = self.refresher.spec = spec

    @property
    def is_loading(self) -> bool:
        """Whether a background load of this model is under way."""
        return self.loading is not None and not self.loading.done()

    @property
    def state(self) -> ModelState:
        """Serving (a champion is loaded), loading, no champion named yet, or failed."""
        if self.pool.snapshot.champion is not None:
            return "serving"
        if self.is_loading or self.loading is None:  # None: its first load is yet to start
            return "loading"
        return "no_champion" if self.refresher.nothing_to_serve else "failed"

    @property
    def champion_ready(self) -> bool:
        """A champion serves, or the registry names none (nothing to wait for)."""
        return self.pool.snapshot.champion is not None or self.refresher.nothing_to_serve


@dataclass(frozen=True)
class ModelStatus:
    """What ``/v1/models`` and ``/readyz`` say of one model."""

    name: str
    state: ModelState
    variants: dict[str, dict[str, str]]
    experiment_id: str | None = None
    challenger_share: float = 0.0
    error: str | None = None


class ModelFleet:
    """The held models, least recently requested first; loads and unloads them."""

    def __init__(
        self,
        catalog: ModelCatalog,
        registry: ModelRegistry,
        routing_state: RoutingStateSource,
        metrics: GatewayMetrics,
        default: tuple[str, ModelSpec],
        *,
        max_loaded: int,
        load_timeout_s: float,
    ) -> None:
        self._catalog, self._registry = catalog, registry
        self._routing_state, self._metrics = routing_state, metrics
        self._max_loaded, self._load_timeout_s = max_loaded, load_timeout_s
        self._held: OrderedDict[str, ServedModel] = OrderedDict()
        self._listed = False
        # Held from the start, so the unprefixed routes have a pool before any load.
        self.default = self._new(*default)
        self._held[self.default.name] = self.default
        self._metrics.models_loaded.set(1)

    def held(self, name: str) -> ServedModel | None:
        """``name``'s state if it is in memory (no I/O, no load)."""
        return self._held.get(name)

    async def serving(self, name: str) -> ServedModel:
        """``name``'s state, loaded on demand; UnknownModelError when it is not registered.

        A request for a model still loading waits for the load, at most ``load_timeout_s``.
        """
        served = self._held.get(name)
        if served is None:
            spec = await self._catalog.spec(name)
            # Another request may have held it while the spec was read: one load, not two.
            served = self._held.get(name) or self._hold(name, spec)
        else:
            self._held.move_to_end(name)
        if (
            served.loading is not None
            and served.is_loading
            and served.pool.snapshot.champion is None
        ):
            # Shielded by asyncio.wait: a client that gives up does not cancel the load.
            await asyncio.wait({served.loading}, timeout=self._load_timeout_s)
        return served

    async def spec(self, name: str) -> ModelSpec:
        """``name``'s spec, without loading it (UnknownModelError when not registered)."""
        served = self._held.get(name)
        return served.spec if served is not None else await self._catalog.spec(name)

    async def load_all(self) -> None:
        """Hold every registered model (default first, up to the limit) and wait for the loads."""
        await self.start_all()
        tasks = [s.loading for s in self._held.values() if s.loading is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def load_initial(self) -> None:
        """Start loading every registered model; return once the default model's load ended.

        Readiness waits for the default model alone, so start-up does too; the others
        go on loading in the background.
        """
        await self.start_all()
        if self.default.loading is not None:
            await asyncio.gather(self.default.loading, return_exceptions=True)

    async def start_all(self) -> None:
        """Hold every registered model (default first, up to the limit) and start each load."""
        names = await self._registered_names()
        # A spec that cannot be read now is read again on demand: the default model keeps
        # its configured spec meanwhile, another model stays unloaded until requested.
        with contextlib.suppress(Exception):
            self.default.use_spec(await self._catalog.spec(self.default.name))
        self._start(self.default)
        for name in names:
            if name not in self._held and len(self._held) < self._max_loaded:
                with contextlib.suppress(Exception):
                    self._hold(name, await self._catalog.spec(name))

    async def resync(self) -> None:
        """Re-read every held model's routing table and aliases (a missed event heals)."""
        if not self._listed:
            await self.load_all()  # the registry was away at start-up: list it now
            return
        for served in list(self._held.values()):
            if not served.is_loading:
                await served.refresher.load_initial()

    async def apply_experiment(self, update: ExperimentUpdated) -> None:
        """Serve ``update`` if its model is held; an unloaded one reads its table when loaded."""
        served = self._held.get(update.model_name)
        if served is not None:
            await served.refresher.apply_experiment(update)

    async def follow_aliases(self, name: str, *, keep_split: bool) -> None:
        """Re-resolve ``name``'s aliases if it is held."""
        served = self._held.get(name)
        if served is not None:
            await served.refresher.follow_aliases(keep_split=keep_split)

    def register(self, event: ModelRegistered) -> None:
        """Take a new or changed spec; start loading a new model while there is room."""
        if not self._catalog.apply(event):
            return  # older than the revision this process has
        served = self._held.get(event.model_name)
        if served is not None:
            served.use_spec(event.spec)
        elif len(self._held) < self._max_loaded:
            self._hold(event.model_name, event.spec)

    def specs(self) -> dict[str, ModelSpec]:
        """Every known model's spec (no I/O): those read so far, and the held ones'."""
        known = dict(self._catalog.cached())
        known.update({name: served.spec for name, served in self._held.items()})
        return known

    def default_status(self) -> ModelStatus:
        """The default model's status (no I/O)."""
        return self._status(self.default.name)

    def statuses(self) -> list[ModelStatus]:
        """Every registered model this process knows of and every held one, by name."""
        names = sorted(set(self._catalog.cached()) | set(self._held))
        return [self._status(name) for name in names]

    async def status(self, name: str) -> ModelStatus:
        """One model's status (UnknownModelError when not registered)."""
        if name not in self._held:
            await self._catalog.spec(name)
        return self._status(name)

    async def stop(self) -> None:
        """Cancel loads under way (shutdown)."""
        for served in self._held.values():
            if served.loading is not None:
                served.loading.cancel()

    def _status(self, name: str) -> ModelStatus:
        served = self._held.get(name)
        if served is None:
            return ModelStatus(name, "unloaded", {})
        snapshot = served.pool.snapshot
        return ModelStatus(
            name=name,
            state=served.state,
            variants=snapshot.describe(),
            experiment_id=snapshot.routing.experiment_id,
            challenger_share=snapshot.routing.challenger_share,
            error=served.refresher.last_error,
        )

    async def _registered_names(self) -> list[str]:
        try:
            names = await self._catalog.names()
        except Exception as error:
            log.error(
                "registered models unlisted; serving the default model",
                extra={"error": repr(error)},
            )
            return []
        self._listed = True
        return names

    def _new(self, name: str, spec: ModelSpec) -> ServedModel:
        pool = ModelPool()
        refresher = ServingRefresher(
            pool, self._registry, self._routing_state, name, self._metrics, spec
        )
        return ServedModel(name, spec, pool, refresher)

    def _hold(self, name: str, spec: ModelSpec) -> ServedModel:
        served = self._new(name, spec)
        self._held[name] = served
        self._start(served)
        self._unload_beyond_limit()
        return served

    def _start(self, served: ServedModel) -> None:
        if not served.is_loading:
            served.loading = asyncio.create_task(
                served.refresher.load_initial(), name=f"load-model-{served.name}"
            )

    def _unload_beyond_limit(self) -> None:
        newest = next(reversed(self._held))
        while len(self._held) > self._max_loaded:
            # Never the default model, nor the one just held for the request waiting on it.
            victim = next((n for n in self._held if n not in (self.default.name, newest)), None)
            if victim is None:
                break
            served = self._held.pop(victim)
            if served.loading is not None:
                served.loading.cancel()
            self._metrics.model_unloads.labels(victim).inc()
            log.info("model unloaded (least recently used)", extra={"model": victim})
        self._metrics.models_loaded.set(len(self._held))
