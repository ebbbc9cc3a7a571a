"""Event handlers of the gateway: each model follows its own routing table and aliases."""

from __future__ import annotations

from services.gateway.fleet import ModelFleet
from shared.events import (
    ExperimentUpdated,
    ModelPromoted,
    ModelRegistered,
    ModelRolledBack,
    Topic,
)
from shared.messaging import ConsumerContext, subscribe_broadcast


class ServingHandlers:
    """Applies routing, alias and registration events to the model they name."""

    def __init__(self, fleet: ModelFleet) -> None:
        self._fleet = fleet

    async def on_experiment(self, event: ExperimentUpdated) -> None:
        """Serve the model's new routing table."""
        await self._fleet.apply_experiment(event)

    # A person's promote or rollback (requested_by set) ends the split at once: the
    # router's overridden table follows, but operator actions must not wait for it.
    async def on_promoted(self, event: ModelPromoted) -> None:
        """Serve the model's aliases after a promotion."""
        await self._fleet.follow_aliases(event.model_name, keep_split=event.requested_by is None)

    async def on_rolled_back(self, event: ModelRolledBack) -> None:
        """Serve the model's aliases after a rollback."""
        await self._fleet.follow_aliases(event.model_name, keep_split=event.requested_by is None)

    async def on_registered(self, event: ModelRegistered) -> None:
        """Learn a new model (and start loading it) or a changed spec."""
        self._fleet.register(event)


def register(ctx: ConsumerContext, handlers: ServingHandlers) -> None:
    """Subscribe the gateway's handlers: every replica gets every event (broadcast)."""
    subscribe_broadcast(ctx, Topic.EXPERIMENT_UPDATED, ExperimentUpdated, handlers.on_experiment)
    subscribe_broadcast(ctx, Topic.MODEL_PROMOTED, ModelPromoted, handlers.on_promoted)
    subscribe_broadcast(ctx, Topic.MODEL_ROLLED_BACK, ModelRolledBack, handlers.on_rolled_back)
    subscribe_broadcast(ctx, Topic.MODEL_REGISTERED, ModelRegistered, handlers.on_registered)
