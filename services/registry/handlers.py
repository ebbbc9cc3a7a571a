"""Registry handler: ModelTrained → register, gate, tag, alias → ModelApproved or ModelRejected."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.registry.core import (
    CHAMPION,
    choose_alias,
    evaluate_gates,
    failed,
    gate_tags,
    lineage_tags,
)
from services.registry.metrics import RegistryMetrics
from services.registry.ports import ModelRegistry
from shared.events import Event, ModelApproved, ModelRejected, ModelTrained, Topic
from shared.messaging import ConsumerContext, EventPublisher, subscribe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryHandlers:
    """The registry's event handler and the blocking registry work behind it."""

    models: ModelRegistry
    publisher: EventPublisher
    metrics: RegistryMetrics
    min_accuracy: float

    async def on_model_trained(self, event: ModelTrained) -> None:
        """Register the candidate, run the gates, give it an alias or reject it."""
        outcome = await asyncio.to_thread(self._register_and_decide, event)
        await self.publisher.publish(outcome)
        label = "approved" if isinstance(outcome, ModelApproved) else "rejected"
        self.metrics.model_versions.labels(label).inc()
        log.info("candidate " + label, extra={"model": event.model_name, "run_id": event.run_id})

    def _register_and_decide(self, event: ModelTrained) -> Event:
        """Blocking: register, tag with gates and lineage, then alias or reject."""
        name = event.model_name
        version = self.models.register(name, event.model_uri, event.run_id)
        gates = evaluate_gates(event.metrics, self.min_accuracy)
        self.models.set_tags(name, version, {**gate_tags(gates), **lineage_tags(event)})
        for gate in gates:
            self.metrics.gate_passed.labels(gate.name).set(1 if gate.passed else 0)
        if failed(gates):
            return ModelRejected.caused_by(
                event,
                producer="registry",
                model_name=name,
                version=version,
                run_id=event.run_id,
                reasons=failed(gates),
            )
        return self._approve(event, version)

    def _approve(self, event: ModelTrained, version: str) -> ModelApproved:
        name = event.model_name
        champion = self.models.alias_version(name, CHAMPION)
        alias = choose_alias(champion, version)
        self.models.set_alias(name, alias, version)
        return ModelApproved.caused_by(
            event,
            producer="registry",
            model_name=name,
            version=version,
            run_id=event.run_id,
            alias=alias,
            champion_version=version if alias == CHAMPION else champion,
            metrics=event.metrics,
        )


def register(consumer: ConsumerContext, handlers: RegistryHandlers) -> None:
    """Subscribe the registry's handler (consumer group flywheel-registry)."""
    subscribe(consumer, Topic.MODEL_TRAINED, ModelTrained, handlers.on_model_trained)
