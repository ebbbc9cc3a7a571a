"""Event handlers of the router: approval → next routing state → ExperimentUpdated."""

from __future__ import annotations

import logging

from services.router.core import Experiment, decide_on_approval
from services.router.metrics import RouterMetrics
from services.router.ports import ExperimentStore
from shared.events import ExperimentUpdated, ModelApproved, Topic
from shared.messaging import ConsumerContext, EventPublisher, subscribe

log = logging.getLogger(__name__)


class ApprovalHandler:
    """Opens, supersedes or starts experiments when a model version is approved."""

    def __init__(
        self,
        store: ExperimentStore,
        publisher: EventPublisher,
        metrics: RouterMetrics,
        initial_share: float,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._initial_share = initial_share

    async def __call__(self, approval: ModelApproved) -> None:
        """Decide the next states and publish each, then persist the last."""
        current = await self._store.current(approval.model_name)
        states = decide_on_approval(current, approval, self._initial_share)
        if not states:
            log.info("approval changes no routing", extra={"version": approval.version})
        for state in states:
            update = to_update(state, approval)
            # Publish before persisting: the decision is deterministic, so a retry after a
            # failed save republishes the same experiment instead of losing the event.
            await self._publisher.publish(update)
            await self._store.save(state, update)
            self._record(state)

    def _record(self, state: Experiment) -> None:
        labels = {"model_name": state.model_name}
        self._metrics.experiment_updates.labels(status=state.status, **labels).inc()
        self._metrics.challenger_share.labels(**labels).set(state.challenger_share)
        if state.status == "running":
            self._metrics.experiments_opened.labels(**labels).inc()
        log.info("routing updated", extra=state.model_dump(mode="json"))


def to_update(state: Experiment, cause: ModelApproved) -> ExperimentUpdated:
    """The ExperimentUpdated announcing ``state``, in the same turn of the loop as ``cause``."""
    return ExperimentUpdated.caused_by(
        cause,
        producer="router",
        experiment_id=state.experiment_id,
        model_name=state.model_name,
        status=state.status,
        champion_version=state.champion_version,
        challenger_version=state.challenger_version,
        challenger_share=state.challenger_share,
    )


def register(ctx: ConsumerContext, approvals: ApprovalHandler) -> None:
    """Subscribe the router's handlers."""
    subscribe(ctx, Topic.MODEL_APPROVED, ModelApproved, approvals)
