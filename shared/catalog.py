"""The registered models and their specs, as every service reads them.

A model is registered once (``flywheel models create``) with its spec; the spec
lives with the registered model in MLflow (``shared.mlflow_specs``). Services
read it through a ``ModelCatalog``: cached, loaded on first use, and refreshed by
the ``model-registered`` event the registry publishes on every change, never
polled per request.

The deployment's default model (``FLYWHEEL_MODEL_NAME`` with ``FLYWHEEL_MODEL_SPEC``
or the packaged spec) keeps working for one release when it was never
registered: the catalog answers with the configured spec and logs a
deprecation warning once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple, Protocol

from shared.errors import NotFoundError
from shared.events import ModelRegistered
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

#: Seconds an unknown name is answered from memory before the source is asked again
#: (a model-registered event for it ends that at once).
MISS_TTL_S = 5.0
#: Unknown names remembered at most.
MAX_MISSES = 1024


class RegisteredSpec(NamedTuple):
    """A model's spec and its revision (1 when registered, one more per change)."""

    revision: int
    spec: ModelSpec


class UnknownModelError(NotFoundError):
    """No model of that name is registered; the message names the known ones."""

    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown model {name!r}; registered models: {listed}")
        self.name, self.known = name, sorted(known)


class SpecSource(Protocol):
    """Where registered specs are stored (MLflow in production). Blocking calls."""

    def registered_spec(self, name: str) -> RegisteredSpec | None:
        """``name``'s current spec; None when no such model is registered with one."""

    def registered_specs(self) -> dict[str, RegisteredSpec]:
        """Every registered model that has a spec."""


class InMemorySpecSource:
    """A spec source in a dict: for tests and for a deployment without MLflow."""

    def __init__(self, specs: dict[str, RegisteredSpec] | None = None) -> None:
        self.specs: dict[str, RegisteredSpec] = dict(specs or {})

    def registered_spec(self, name: str) -> RegisteredSpec | None:
        """``name``'s spec, if any."""
        return self.specs.get(name)

    def registered_specs(self) -> dict[str, RegisteredSpec]:
        """A copy of every spec."""
        return dict(self.specs)


class ModelCatalog:
    """Specs of the registered models, cached per process.

    >>> from shared.spec import load_spec
    >>> spec = load_spec()
    >>> catalog = ModelCatalog(InMemorySpecSource({"churn": RegisteredSpec(1, spec)}))
    >>> asyncio.run(catalog.spec("churn")) == spec
    True
    >>> asyncio.run(catalog.spec("fraud"))
    Traceback (most recent call last):
    ...
    shared.catalog.UnknownModelError: unknown model 'fraud'; registered models: churn
    """

    def __init__(
        self,
        source: SpecSource,
        default_name: str | None = None,
        default_spec: ModelSpec | None = None,
        miss_ttl_s: float = MISS_TTL_S,
    ) -> None:
        self._source = source
        self._default = (default_name, default_spec) if default_name and default_spec else None
        self._cache: dict[str, RegisteredSpec] = {}
        self._warned = False
        #: Names found unregistered, with when to ask the source again and the known names then.
        self._misses: dict[str, tuple[float, list[str]]] = {}
        self._miss_ttl_s = miss_ttl_s

    @property
    def default_name(self) -> str | None:
        """The deployment's default model (the unprefixed routes' and events' model)."""
        return self._default[0] if self._default else None

    async def spec(self, name: str) -> ModelSpec:
        """``name``'s spec (UnknownModelError when not registered)."""
        return (await self.registered(name)).spec

    async def registered(self, name: str) -> RegisteredSpec:
        """``name``'s spec and revision: cached, else read from the source once."""
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        missed = self._misses.get(name)
        if missed is not None and time.monotonic() < missed[0]:
            # A client repeating a wrong name must not cost MLflow two calls a request.
            raise UnknownModelError(name, missed[1])
        found = await asyncio.to_thread(self._source.registered_spec, name)
        if found is None:
            found = self._configured_default(name)
        if found is None:
            known = list(await self.names())
            self._remember_miss(name, known)
            raise UnknownModelError(name, known)
        self._cache[name] = found
        return found

    def _remember_miss(self, name: str, known: list[str]) -> None:
        if len(self._misses) >= MAX_MISSES:  # made-up names must not grow memory without bound
            self._misses.clear()
        self._misses[name] = (time.monotonic() + self._miss_ttl_s, known)

    async def names(self) -> list[str]:
        """Every registered model (and the configured default), sorted."""
        specs = await asyncio.to_thread(self._source.registered_specs)
        for name, registered in specs.items():
            self._keep(name, registered)
        default = self.default_name
        return sorted(set(specs) | ({default} if default else set()))

    def cached(self) -> dict[str, ModelSpec]:
        """The specs this process has read so far (no I/O)."""
        return {name: registered.spec for name, registered in self._cache.items()}

    def apply(self, event: ModelRegistered) -> bool:
        """Take the spec a ``model-registered`` event carries; False when it is older."""
        return self._keep(event.model_name, RegisteredSpec(event.spec_revision, event.spec))

    def _keep(self, name: str, registered: RegisteredSpec) -> bool:
        self._misses.pop(name, None)
        cached = self._cache.get(name)
        if cached is not None and cached.revision > registered.revision:
            return False
        self._cache[name] = registered
        return True

    def _configured_default(self, name: str) -> RegisteredSpec | None:
        if self._default is None or name != self._default[0]:
            return None
        if not self._warned:
            self._warned = True
            log.warning(
                "model served from FLYWHEEL_MODEL_SPEC, not registered: deprecated, "
                "register it with `flywheel models create`",
                extra={"model": name},
            )
        return RegisteredSpec(0, self._default[1])
