"""The registry's Prometheus collectors, built on a registry passed in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.registry.ports import VersionInfo
from shared.errors import NotFoundError
from shared.events import ModelApproved, ModelPromoted, ModelRolledBack

log = logging.getLogger(__name__)

#: Version tags the registry writes (``services.registry.core``): the decision and each gate.
DECISION_TAG = "flywheel.decision"
GATE_TAG_PREFIX = "gate."


@dataclass(frozen=True)
class RegistryMetrics:
    """Per model: versions approved or rejected, how its latest candidate fared, its aliases,
    approved versions BentoML could not package."""

    model_versions: Counter
    gate_passed: Gauge
    alias_version: Gauge
    packaging_skipped: Counter
    _aliases_shown: dict[str, set[str]] = field(default_factory=dict, repr=False)
    """The aliases each model's gauge has a series for (to drop one that moved away)."""

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RegistryMetrics:
        """Register the collectors on ``registry``."""
        return cls(
            model_versions=Counter(
                "flywheel_registry_model_versions_total",
                "Registered versions by model and outcome (approved, rejected).",
                ["model_name", "outcome"],
                registry=registry,
            ),
            gate_passed=Gauge(
                "flywheel_registry_gate_passed",
                "1 when the model's latest candidate passed the gate, 0 when it failed.",
                ["model_name", "gate"],
                registry=registry,
            ),
            alias_version=Gauge(
                "flywheel_registry_alias_version",
                "The version each alias (champion, challenger, champion-1...) points to.",
                ["model_name", "alias"],
                registry=registry,
            ),
            packaging_skipped=Counter(
                "flywheel_registry_packaging_skipped_total",
                "Approved versions not packaged for BentoML, by the flavour that kept them out "
                "(bentoml.sklearn takes sklearn models only).",
                ["model_name", "flavor"],
                registry=registry,
            ),
        )

    def seed(self, model_name: str, versions: Sequence[VersionInfo]) -> None:
        """Start where the last process stopped: decisions, the newest gates, the aliases.

        Without it every series is empty after a restart, and the counter's drop to
        zero reads as a reset. Call it once per model, on a fresh process.
        """
        decisions = [v.tags.get(DECISION_TAG) for v in versions]
        for outcome in ("approved", "rejected"):
            count = decisions.count(f"model-{outcome}")
            if count:
                self.model_versions.labels(model_name, outcome).inc(count)
        gated = [v for v in versions if any(k.startswith(GATE_TAG_PREFIX) for k in v.tags)]
        if gated:
            newest = max(gated, key=lambda v: int(v.version))
            for key, value in newest.tags.items():
                if key.startswith(GATE_TAG_PREFIX):
                    gate = key.removeprefix(GATE_TAG_PREFIX)
                    passed = 1 if value.startswith("passed") else 0
                    self.gate_passed.labels(model_name, gate).set(passed)
        self.show_aliases(model_name, versions)

    def show_aliases(self, model_name: str, versions: Sequence[VersionInfo]) -> None:
        """Set ``model_name``'s alias gauges to ``versions``' aliases; an alias no version has
        disappears (other models' series stay)."""
        now = {alias: int(v.version) for v in versions for alias in v.aliases}
        for gone in self._aliases_shown.get(model_name, set()) - set(now):
            self.alias_version.remove(model_name, gone)
        for alias, version in now.items():
            self.alias_version.labels(model_name, alias).set(version)
        self._aliases_shown[model_name] = set(now)


@dataclass
class MetricsFromRegistry:
    """Keeps the metrics in step with MLflow: every model seeded at start, a model's aliases
    after every move of them."""

    list_versions: Callable[[str], list[VersionInfo]]
    """Blocking: every version of a model with aliases and tags (``ModelRegistry``)."""
    metrics: RegistryMetrics
    list_models: Callable[[], list[str]]
    """Blocking: every registered model's name (``ModelRegistry``)."""
    _seeding: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Seed in the background: a slow MLflow must not hold up start-up."""
        self._seeding = asyncio.create_task(self._seed())

    async def _seed(self) -> None:
        try:
            names = await asyncio.to_thread(self.list_models)
            held = {name: await asyncio.to_thread(self._versions, name) for name in names}
        except Exception as error:
            log.warning("registry metrics not seeded", extra={"error": repr(error)})
            return
        for name, versions in held.items():
            self.metrics.seed(name, versions)

    async def on_aliases_moved(
        self, event: ModelPromoted | ModelRolledBack | ModelApproved
    ) -> None:
        """Read the model's aliases again after a promotion, a rollback or an approval."""
        try:
            versions = await asyncio.to_thread(self._versions, event.model_name)
        except Exception as error:
            # A gauge a little stale is better than a dead-lettered promotion event.
            log.warning("alias metrics not refreshed", extra={"error": repr(error)})
            return
        self.metrics.show_aliases(event.model_name, versions)

    def _versions(self, name: str) -> list[VersionInfo]:
        try:
            return self.list_versions(name)
        except NotFoundError:
            return []
