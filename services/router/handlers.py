"""Event handlers of the router: approvals open experiments, outcomes drive their looks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from services.router.core import Experiment, decide_on_approval
from services.router.core.experiment import ExperimentPlan, open_queued, plan_for_spec
from services.router.core.lifecycle import look, look_due, state_changed
from services.router.core.outcomes import LabelStatus, close_increments
from services.router.core.override import apply_override, override_of, served_champion
from services.router.core.report import look_point
from services.router.core.tally import (
    assignment_increments,
    failure_increments,
    label_of,
    late_increments,
    pending_of,
    request_increments,
    stratum_of,
    unit_of,
)
from services.router.metrics import RouterMetrics
from services.router.ports import ExperimentStore, ModelAliases, ModelSpecs, OutcomeTally
from shared.catalog import UnknownModelError
from shared.errors import DependencyUnavailableError
from shared.events import (
    Event,
    ExperimentUpdated,
    FeedbackReceived,
    ModelApproved,
    ModelPromoted,
    ModelRolledBack,
    PredictionFailed,
    PredictionLogged,
    Topic,
)
from shared.messaging import ConsumerContext, EventPublisher, subscribe

log = logging.getLogger(__name__)

_EVENT_NAMESPACE = uuid.UUID("0b7f6c1e-2a8d-4c55-8f0e-5d1c9e3a7b42")
Clock = Callable[[], datetime]
_COUNTED: dict[LabelStatus, str] = {"open": "yes", "late": "late", "duplicate": "duplicate"}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ApprovalHandler:
    """Opens, supersedes or starts experiments when a model version is approved.

    A regressor's experiment (its spec from ``specs``, the catalog) declares its loss
    as the primary metric when it opens; without ``specs`` every experiment uses ``plan``.
    """

    def __init__(
        self,
        store: ExperimentStore,
        publisher: EventPublisher,
        metrics: RouterMetrics,
        plan: ExperimentPlan,
        specs: ModelSpecs | None = None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._plan = plan
        self._specs = specs

    async def __call__(self, approval: ModelApproved) -> None:
        """Decide the next states and publish each, then persist the last."""
        current = await self._store.current(approval.model_name)
        plan = await self._plan_for(approval.model_name)
        states = decide_on_approval(current, approval, plan)
        if not states:
            log.info(
                "approval changes no routing",
                extra={"model": approval.model_name, "version": approval.version},
            )
        for state in states:
            update = to_update(state, approval)
            # Publish before persisting: the decision is deterministic, so a retry after a
            # failed save republishes the same experiment instead of losing the event.
            await self._publisher.publish(update)
            await self._store.save(
                state.model_copy(update={"last_event_id": update.event_id}), update
            )
            self._metrics.record(state)

    async def _plan_for(self, model_name: str) -> ExperimentPlan:
        if self._specs is None:
            return self._plan
        try:
            spec = await self._specs.spec(model_name)
        except UnknownModelError:
            # Approved but not in the catalog (a deployment serving FLYWHEEL_MODEL_SPEC
            # only knows its default): the configured metric, as before regressors.
            log.warning("approved model has no spec", extra={"model": model_name})
            return self._plan
        return plan_for_spec(self._plan, spec)


def to_update(state: Experiment, cause: Event) -> ExperimentUpdated:
    """The ExperimentUpdated announcing ``state``, in the same turn of the loop as ``cause``."""
    return ExperimentUpdated.caused_by(cause, producer="router", **_update_fields(state))


def _update_fields(state: Experiment) -> dict[str, object]:
    champion = served_champion(state)
    ended = state.override is not None or state.status == "promoted"
    codes = ",".join(state.reasons) or None
    return {
        "experiment_id": state.experiment_id,
        "model_name": state.model_name,
        "status": state.status,
        "champion_version": champion,
        "challenger_version": None if ended else state.challenger_version,
        "challenger_share": state.challenger_share,
        "stage": state.ramp_step,
        "decision": state.decision,
        "reason": f"{codes}: {state.override.reason}" if state.override else codes,
        "requested_by": state.override.requested_by if state.override else None,
        "hold_cause": codes if state.decision == "hold" and state.is_running else None,
    }


def _event_id(state: Experiment, kind: str) -> str:
    # Deterministic, so a retry after a crash republishes the same event (consumers dedupe).
    key = f"{state.experiment_id}:{state.looks}:{state.status}:{state.ramp_step}:{kind}"
    return str(uuid.uuid5(_EVENT_NAMESPACE, key))


def _in_turn(state: Experiment) -> dict[str, object]:
    correlation = {"correlation_id": state.correlation_id} if state.correlation_id else {}
    return {"producer": "router", "causation_id": state.last_event_id, **correlation}


class ModelLocks:
    """One lock per model, held while its experiment is read, decided and saved.

    Looks and operator overrides of one model take turns; another model's never
    wait for them.
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def __call__(self, model_name: str) -> asyncio.Lock:
        """``model_name``'s lock (made on first use)."""
        return self._locks.setdefault(model_name, asyncio.Lock())


class OutcomeHandler:
    """Counts routed predictions and outcomes per experiment and looks after each batch.

    Looks run one task per model: an event or a tick waits for them at most
    ``look_wait_s``, and a look that fails is counted and logged, not raised (the
    next tick looks again), so one model's stuck or failing experiment never holds
    up the events, or the looks, of another.
    """

    def __init__(
        self,
        store: ExperimentStore,
        tally: OutcomeTally,
        aliases: ModelAliases,
        publisher: EventPublisher,
        metrics: RouterMetrics,
        clock: Clock = _utc_now,
        locks: ModelLocks | None = None,
        look_wait_s: float = 10.0,
    ) -> None:
        self._store, self._tally, self._aliases = store, tally, aliases
        self._publisher, self._metrics, self._clock = publisher, metrics, clock
        self._locks = locks or ModelLocks()
        self._look_wait_s = look_wait_s
        self._looking: dict[str, asyncio.Task[None]] = {}

    @property
    def locks(self) -> ModelLocks:
        """The per-model locks (operator overrides share them)."""
        return self._locks

    async def on_prediction(self, event: PredictionLogged) -> None:
        """Count the assignment and latency of one routed prediction."""
        if event.experiment_id is None or not event.challenger_share or event.shadow:
            return  # served outside any experiment, or a shadow answer nobody saw
        model, exp = event.model_name, event.experiment_id
        # One assignment per unit (entity, or request) and period; latency once per request;
        # every row's outcome window, which a later look closes.
        unit = f"unit:{exp}:{stratum_of(event)}:{unit_of(event)}"
        await self._tally.add(model, exp, unit, assignment_increments(event))
        request = f"request:{exp}:{event.correlation_id}"
        await self._tally.add(model, exp, request, request_increments(event))
        await self._tally.open_outcome(model, exp, pending_of(event))

    async def on_failure(self, event: PredictionFailed) -> None:
        """Count the errors of one failed request against the variant that answered it."""
        if event.experiment_id is None or not event.challenger_share:
            return
        await self._tally.add(
            event.model_name, event.experiment_id, event.event_id, failure_increments(event)
        )

    async def on_feedback(self, event: FeedbackReceived) -> None:
        """Keep one label for its outcome window, then look at the experiment."""
        model = event.model_name
        if event.experiment_id is None or not event.challenger_share:
            self._metrics.outcomes.labels(model_name=model, counted="no").inc()
            return
        exp = event.experiment_id
        status = await self._tally.label(model, exp, event.request_id, label_of(event))
        if status == "late":  # reported, never used for decisions
            await self._tally.add(model, exp, event.event_id, late_increments(event))
        self._metrics.outcomes.labels(model_name=model, counted=_COUNTED[status]).inc()
        await self._look_per_model({model: [exp]})

    async def tick(self) -> None:
        """Close outcome windows and look at every running experiment (called periodically)."""
        due: dict[str, list[str]] = {}
        for experiment in await self._store.all():
            if experiment.is_running or experiment.actions_pending:
                due.setdefault(experiment.model_name, []).append(experiment.experiment_id)
        await self._look_per_model(due)

    async def close(self) -> None:
        """Cancel the looks still running (a shut-down hook)."""
        for task in self._looking.values():
            task.cancel()
        await asyncio.gather(*self._looking.values(), return_exceptions=True)

    async def _look_per_model(self, due: dict[str, list[str]]) -> None:
        """Look at each model's experiments in a task of its own; wait at most ``look_wait_s``.

        A model whose previous look still runs is skipped: that look, or the next tick,
        sees the outcomes counted meanwhile.
        """
        started = []
        for model, experiment_ids in due.items():
            running = self._looking.get(model)
            if running is not None and not running.done():
                continue
            task = asyncio.create_task(
                self._look_guarded(model, experiment_ids), name=f"router-look:{model}"
            )
            self._looking[model] = task
            started.append(task)
        if started:
            await asyncio.wait(started, timeout=self._look_wait_s)

    async def _look_guarded(self, model_name: str, experiment_ids: list[str]) -> None:
        for experiment_id in experiment_ids:
            try:
                await self.look_at(model_name, experiment_id)
            except Exception as error:  # the tick looks again; the event that asked is done
                self._metrics.look_failures.labels(model_name=model_name).inc()
                log.warning(
                    "look failed",
                    extra={
                        "model": model_name,
                        "experiment_id": experiment_id,
                        "error": repr(error),
                    },
                )

    async def look_at(self, model_name: str, experiment_id: str) -> None:
        """Finish a pending verdict, or look when enough new outcomes arrived."""
        async with self._locks(model_name):
            experiment = await self._store.get(model_name, experiment_id)
            if experiment is None:
                return
            if experiment.actions_pending:
                await self._carry_out(experiment)
                return
            if not experiment.is_running:
                # A queued challenger whose opening a crash interrupted opens now.
                await open_queued_challenger(
                    self._store, self._publisher, self._metrics, experiment
                )
                return
            await self._close_windows(experiment)
            stats = await self._tally.stats(model_name, experiment_id)
            now = self._clock()
            if not look_due(experiment, stats, now):
                return
            after = look(experiment, stats, now)
            point = look_point(after, stats, now)
            if point is not None:
                await self._tally.append_look(model_name, experiment_id, point)
            await self._apply(experiment, after)

    async def _close_windows(self, experiment: Experiment) -> None:
        """Move the outcomes whose windows have closed into the experiment's counters."""
        model, exp = experiment.model_name, experiment.experiment_id
        window = experiment.plan.outcome_window
        for _ in range(3):  # -1: another replica fixed a shift meanwhile; read again
            closing = await self._tally.due(model, exp, window, self._clock().timestamp())
            if not closing.outcomes:
                return
            closed = close_increments(closing, window, experiment.plan.loss)
            counted = await self._tally.close(
                model, exp, closed.increments, closed.reward_shift, closed.loss_shift
            )
            if counted >= 0:
                return

    async def _apply(self, before: Experiment, after: Experiment) -> None:
        self._metrics.looks.labels(model_name=after.model_name, decision=after.decision).inc()
        if after.actions_pending:
            # Persist the verdict first: a restart then finishes it instead of deciding anew.
            await self._store.save(after, None)
            await self._carry_out(after)
            return
        if not state_changed(before, after):
            await self._store.save(after, None)
            return
        update = ExperimentUpdated(
            event_id=_event_id(after, "update"), **_in_turn(after), **_update_fields(after)
        )
        await self._publisher.publish(update)
        await self._store.save(after.model_copy(update={"last_event_id": update.event_id}), update)
        self._metrics.record(after)
        log.info(
            "experiment updated",
            extra={
                "model": after.model_name,
                "decision": after.decision,
                "share": after.challenger_share,
            },
        )

    async def _carry_out(self, state: Experiment) -> None:
        """Move aliases and announce the verdict; every step is safe to repeat."""
        challenger = state.challenger_version or ""
        try:
            if state.status == "promoted":
                await asyncio.to_thread(
                    self._aliases.promote, state.model_name, challenger, state.champion_version
                )
            else:
                await asyncio.to_thread(self._aliases.drop_challenger, state.model_name, challenger)
        except Exception as error:
            # The verdict stays pending in Redis; the event is retried, not dead-lettered.
            raise DependencyUnavailableError(f"aliases not moved: {error!r}") from error
        update = ExperimentUpdated(
            event_id=_event_id(state, "update"), **_in_turn(state), **_update_fields(state)
        )
        await self._publisher.publish(update)
        verdict = _verdict(state, update)
        if verdict is not None:
            await self._publisher.publish(verdict)
        done = state.model_copy(update={"actions_pending": False, "last_event_id": update.event_id})
        await self._store.save(done, update)
        self._metrics.record(done)
        log.info(
            "experiment concluded",
            extra={"model": state.model_name, "status": state.status, "reasons": state.reasons},
        )
        await open_queued_challenger(self._store, self._publisher, self._metrics, done)


async def open_queued_challenger(
    store: ExperimentStore, publisher: EventPublisher, metrics: RouterMetrics, ended: Experiment
) -> None:
    """Open the challenger queued behind ``ended``, in its approval's turn (safe to repeat)."""
    opened = open_queued(ended)
    if opened is None or ended.queued is None:
        return
    current = await store.current(ended.model_name)
    if current is not None and current.experiment_id != ended.experiment_id:
        return  # opened already, or something newer owns the routing table
    update = ExperimentUpdated.caused_by(
        ended.queued,
        producer="router",
        event_id=_event_id(opened, "update"),
        **_update_fields(opened),
    )
    await publisher.publish(update)
    await store.save(opened.model_copy(update={"last_event_id": update.event_id}), update)
    metrics.record(opened)
    log.info(
        "queued challenger opened",
        extra={"model": opened.model_name, "version": opened.challenger_version},
    )


def _verdict(state: Experiment, update: ExperimentUpdated) -> Event | None:
    reason = ",".join(state.reasons)
    common = {
        "event_id": _event_id(state, "verdict"),
        "producer": "router",
        "correlation_id": update.correlation_id,
        "causation_id": update.event_id,
        "model_name": state.model_name,
        "reason": reason,
    }
    challenger = state.challenger_version or ""
    if state.status == "promoted":
        return ModelPromoted(version=challenger, previous_champion=state.champion_version, **common)
    if state.decision == "inconclusive":
        return None  # the champion simply stays; nothing was rolled back
    return ModelRolledBack(version=state.champion_version, rolled_back_version=challenger, **common)


class OverrideHandler:
    """A person's promote or rollback ends the model's experiment: operator actions win."""

    def __init__(
        self,
        store: ExperimentStore,
        publisher: EventPublisher,
        metrics: RouterMetrics,
        locks: ModelLocks,
        clock: Clock = _utc_now,
    ) -> None:
        self._store, self._publisher, self._metrics = store, publisher, metrics
        self._locks, self._clock = locks, clock

    async def on_promoted(self, event: ModelPromoted) -> None:
        """A manual promotion: the promoted version serves alone."""
        await self._apply(event)

    async def on_rolled_back(self, event: ModelRolledBack) -> None:
        """A manual rollback: the restored champion serves alone."""
        await self._apply(event)

    async def _apply(self, event: ModelPromoted | ModelRolledBack) -> None:
        action = override_of(event)
        if action is None:
            return
        # The model's lock, shared with its looks: one in flight cannot save over the
        # override; another model's look never delays it.
        async with self._locks(event.model_name):
            current = await self._store.current(event.model_name)
            state = apply_override(current, action, self._clock())
            if state is None:
                return
            update = ExperimentUpdated.caused_by(
                event,
                producer="router",
                event_id=_event_id(state, "override"),
                **_update_fields(state),
            )
            await self._publisher.publish(update)
            saved = state.model_copy(update={"last_event_id": update.event_id})
            await self._store.save(saved, update)
            self._metrics.record(state)
            await open_queued_challenger(self._store, self._publisher, self._metrics, saved)
        log.warning(
            "operator action overrides the router",
            extra={
                "model": event.model_name,
                "status": state.status,
                "by": action.requested_by,
                "reason": action.reason,
            },
        )


class Ticker:
    """Calls ``tick`` every ``interval_s`` in the background: windows close without traffic."""

    def __init__(self, tick: Callable[[], Awaitable[None]], interval_s: float) -> None:
        self._tick, self._interval_s = tick, interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start ticking (a start-up hook)."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop ticking (a shut-down hook)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self._tick()
            except Exception as error:  # Redis away: the next tick tries again
                log.warning("periodic look failed", extra={"error": repr(error)})


def register(
    ctx: ConsumerContext,
    approvals: ApprovalHandler,
    outcomes: OutcomeHandler,
    overrides: OverrideHandler | None = None,
) -> None:
    """Subscribe the router's handlers."""
    subscribe(ctx, Topic.MODEL_APPROVED, ModelApproved, approvals)
    if overrides is not None:
        subscribe(ctx, Topic.MODEL_PROMOTED, ModelPromoted, overrides.on_promoted)
        subscribe(ctx, Topic.MODEL_ROLLED_BACK, ModelRolledBack, overrides.on_rolled_back)
    subscribe(ctx, Topic.PREDICTION_LOGGED, PredictionLogged, outcomes.on_prediction)
    subscribe(ctx, Topic.PREDICTION_FAILED, PredictionFailed, outcomes.on_failure)
    subscribe(ctx, Topic.FEEDBACK_RECEIVED, FeedbackReceived, outcomes.on_feedback)
