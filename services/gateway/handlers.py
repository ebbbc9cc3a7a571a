"""Event handlers of the gateway: follow the routing table and the registry's aliases."""

from __future__ import annotations

from services.gateway.serving import ServingRefresher
from shared.events import ExperimentUpdated, ModelPromoted, ModelRolledBack, Topic
from shared.messaging import ConsumerContext, subscribe_broadcast


def register(ctx: ConsumerContext, refresher: ServingRefresher) -> None:
    """Subscribe the gateway's handlers."""

    async def on_experiment(event: ExperimentUpdated) -> None:
        await refresher.apply_experiment(event)

    # A person's promote or rollback (requested_by set) ends the split at once: the
    # router's overridden table follows, but operator actions must not wait for it.
    async def on_promoted(event: ModelPromoted) -> None:
        await refresher.follow_aliases(keep_split=event.requested_by is None)

    async def on_rolled_back(event: ModelRolledBack) -> None:
        await refresher.follow_aliases(keep_split=event.requested_by is None)

    subscribe_broadcast(ctx, Topic.EXPERIMENT_UPDATED, ExperimentUpdated, on_experiment)
    subscribe_broadcast(ctx, Topic.MODEL_PROMOTED, ModelPromoted, on_promoted)
    subscribe_broadcast(ctx, Topic.MODEL_ROLLED_BACK, ModelRolledBack, on_rolled_back)
