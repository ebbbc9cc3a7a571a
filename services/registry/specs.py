"""Registering models and changing their specs: store in MLflow, tell every service.

The spec lives with the registered model (``shared.mlflow_specs``). A change that
models already trained and served could not take is refused with every reason
(``services.registry.core.spec_change``); any other is stored as the next revision
and announced with ``model-registered``, which each service's catalog applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import NamedTuple

from services.registry.core import SpecChange, spec_change
from services.registry.ports import SpecStore
from shared.catalog import ModelCatalog, RegisteredSpec
from shared.errors import DependencyUnavailableError, FlywheelError
from shared.events import ModelRegistered
from shared.messaging import EventPublisher
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

#: Who registered the deployment's default model when the registry did it at start.
DEFAULT_REGISTRANT = "registry (FLYWHEEL_MODEL_NAME default, deprecated)"


class SpecRegistration(NamedTuple):
    """What registering a spec did: the model, its current revision and the change."""

    name: str
    spec_revision: int
    change: SpecChange


@dataclass
class ModelSpecs:
    """Creates models and changes their specs (the ``/v1/models`` admin route and start-up)."""

    store: SpecStore
    catalog: ModelCatalog
    publisher: EventPublisher
    default: tuple[str, ModelSpec] | None = None
    """The deployment's configured model and spec (FLYWHEEL_MODEL_NAME/SPEC; deprecated)."""
    retry_s: float = 5.0
    """Wait between tries of registering the default model while MLflow or Kafka is down."""
    # One registration at a time per replica: two at once would both read revision N.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _starting: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.default is not None and self.default[1].name != self.default[0]:
            # The configured spec's own name never had to match FLYWHEEL_MODEL_NAME; a
            # registered spec's must, so the default model's spec takes the model's name.
            name, spec = self.default
            self.default = (name, spec.model_copy(update={"name": name}))

    async def register(self, name: str, spec: ModelSpec, requested_by: str) -> SpecRegistration:
        """Create ``name`` with ``spec``, or change its spec; the same spec again changes nothing.

        Raises InvalidInputError when the spec names another model, IncompatibleSpecError
        naming every break, DependencyUnavailableError when MLflow is down.
        """
        async with self._lock:
            current = await asyncio.to_thread(self.store.registered_spec, name)
            served = self.default[1] if self.default and self.default[0] == name else None
            change = spec_change(name, current.spec if current else None, spec, served)
            stored = current
            if change != "unchanged" or stored is None:
                stored = await asyncio.to_thread(self.store.register, name, spec, requested_by)
        # "unchanged" announces again too: a retry after a failed publish heals the caches.
        await self._announce(name, stored, requested_by)
        log.info("model spec " + change, extra={"model": name, "revision": stored.revision})
        return SpecRegistration(name, stored.revision, change)

    async def start(self, broker_started: asyncio.Event) -> None:
        """Register the configured default model in the background, once Kafka is up."""
        if self.default is not None:
            self._starting = asyncio.create_task(self._register_default(broker_started))

    async def stop(self) -> None:
        """Stop trying to register the default model."""
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting

    async def _register_default(self, broker_started: asyncio.Event) -> None:
        assert self.default is not None
        name, spec = self.default
        await broker_started.wait()
        while True:
            try:
                await self._register_default_once(name, spec)
                return
            except DependencyUnavailableError as error:
                log.warning("default model not registered yet", extra={"error": str(error)})
                await asyncio.sleep(self.retry_s)
            except FlywheelError as error:
                # Retrying cannot help; the catalog keeps serving the configured spec.
                log.error("default model not registered", extra={"error": str(error)})
                return

    async def _register_default_once(self, name: str, spec: ModelSpec) -> None:
        stored = await asyncio.to_thread(self.store.registered_spec, name)
        if stored is not None:
            if stored.spec != spec:
                log.warning(
                    "the registered spec, not FLYWHEEL_MODEL_SPEC, is served",
                    extra={"model": name, "revision": stored.revision},
                )
            return
        log.warning(
            "registering the default model from FLYWHEEL_MODEL_NAME/FLYWHEEL_MODEL_SPEC: "
            "deprecated, register models with `flywheel models create`",
            extra={"model": name},
        )
        await self.register(name, spec, DEFAULT_REGISTRANT)

    async def _announce(self, name: str, stored: RegisteredSpec, requested_by: str) -> None:
        event = ModelRegistered(
            producer="registry",
            model_name=name,
            spec_revision=stored.revision,
            spec=stored.spec,
            requested_by=requested_by,
        )
        self.catalog.apply(event)
        await self.publisher.publish(event)
