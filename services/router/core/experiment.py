"""The router's pure core: from the current experiment and an approval to the next states.

A newer challenger approved while an experiment runs replaces it only while nobody
has looked at it yet (status ``superseded``, reasons ``no_look_yet``); after the
first look it is queued (reason ``challenger_queued``) and opens once the running
experiment has its verdict, against the champion that verdict leaves serving.

An experiment id is derived from the approval's ``event_id`` (UUID5), so handling
the same approval twice decides the same experiment: publishing is then safe
to repeat when persisting failed after it.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.router.core.decision import Decision, DecisionConfig, RunningBounds
from services.router.core.outcomes import LossKind, OutcomeWindow
from services.router.core.results import LOSS_METRICS
from shared.events import Action, ExperimentStatus, ModelApproved
from shared.spec import ModelSpec

_EXPERIMENT_NAMESPACE = uuid.UUID("6f1d0c52-3f4e-4b7a-9a8e-2f0c1d5e7a90")

#: The canary schedule: the challenger's share at each stage.
DEFAULT_RAMP: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50)


class ExperimentPlan(BaseModel):
    """How every new experiment ramps and decides (from the router's settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shares: tuple[float, ...] = DEFAULT_RAMP
    stage_min_labelled: int = Field(100, ge=0, description="Challenger outcomes per stage.")
    look_every: int = Field(50, ge=1, description="Labelled outcomes between looks.")
    max_duration_s: float = Field(7 * 24 * 3600.0, gt=0)
    decision: DecisionConfig = DecisionConfig()
    outcome_window: OutcomeWindow = OutcomeWindow()

    @property
    def loss(self) -> LossKind | None:
        """The regressor's loss the experiment compares, or None (accuracy or reward)."""
        for kind, metric in LOSS_METRICS.items():
            if self.decision.metric == metric:
                return kind
        return None

    def declared(self) -> tuple[str, ...]:
        """The reason code declaring a loss metric when an experiment opens (else none).

        >>> plan_for_spec(ExperimentPlan(), None).declared()
        ()
        """
        return (f"primary_metric:{self.decision.metric}",) if self.decision.is_loss else ()


def plan_for_spec(plan: ExperimentPlan, spec: ModelSpec | None) -> ExperimentPlan:
    """The plan an experiment of a model with ``spec`` opens under.

    A regressor's experiments compare the spec's per-outcome loss (lower is better):
    ``squared_error`` or ``absolute_error``; a classifier's keep the configured metric
    (accuracy, or a reward). None (the spec unknown) keeps the configured plan.
    """
    if spec is None or not spec.is_regression:
        return plan
    decision = plan.decision.model_copy(update={"metric": LOSS_METRICS[spec.loss]})
    return plan.model_copy(update={"decision": decision})


class Override(BaseModel):
    """A person's promote or rollback: it ends a running experiment and names the champion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Literal["promote", "rollback"]
    champion_version: str = Field(description="The champion the person chose; it serves alone.")
    requested_by: str
    reason: str
    event_id: str = Field(description="The registry's model-promoted/rolled-back event.")
    requested_at: AwareDatetime = Field(description="When the person's action happened.")


class Experiment(BaseModel):
    """The routing state of one model: who serves, and how much traffic the challenger gets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiment_id: str
    model_name: str
    status: ExperimentStatus
    champion_version: str
    challenger_version: str | None = None
    challenger_share: float = Field(0.0, ge=0.0, le=1.0)
    opened_at: AwareDatetime = Field(description="When the experiment (or state) began.")
    #: Position on the ramp schedule ``plan.shares``.
    ramp_step: int = Field(0, ge=0)
    plan: ExperimentPlan = ExperimentPlan()
    correlation_id: str | None = Field(None, description="The approval's turn of the loop.")
    last_event_id: str | None = Field(None, description="The last event this experiment caused.")
    decision: Action | None = None
    reasons: tuple[str, ...] = ()
    bounds: dict[str, RunningBounds] = Field(default_factory=dict)
    last_look: Decision | None = None
    looks: int = 0
    looked_at_labelled: int = 0
    stage_base_labelled: int = Field(0, description="Challenger outcomes when the stage began.")
    concluded_at: AwareDatetime | None = None
    actions_pending: bool = Field(False, description="Aliases and events of the verdict not done.")
    override: Override | None = Field(None, description="The operator action that ended it.")
    queued: ModelApproved | None = Field(
        None, description="The newest challenger approved while this ran: it opens next."
    )

    @property
    def is_running(self) -> bool:
        """Whether a challenger is receiving traffic under this experiment."""
        return self.status == "running"

    @property
    def is_final_stage(self) -> bool:
        """Whether the ramp has reached its last share."""
        return self.ramp_step >= len(self.plan.shares) - 1


def experiment_id_for(approval: ModelApproved) -> str:
    """The experiment id an approval opens: stable across redeliveries of the same event."""
    return str(uuid.uuid5(_EXPERIMENT_NAMESPACE, approval.event_id))


def decide_on_approval(
    current: Experiment | None, approval: ModelApproved, plan: ExperimentPlan
) -> tuple[Experiment, ...]:
    """The states to publish, in order, after ``approval``; empty when nothing changes."""
    if approval.alias == "champion":
        return _on_champion(current, approval)
    return _on_challenger(current, approval, plan)


def _on_champion(current: Experiment | None, approval: ModelApproved) -> tuple[Experiment, ...]:
    # A running experiment owns the routing table until it is promoted or rolled back.
    if current is not None and current.is_running:
        return ()
    if current is not None and current.champion_version == approval.version:
        return ()
    return (
        Experiment(
            experiment_id=experiment_id_for(approval),
            model_name=approval.model_name,
            status="champion_only",
            champion_version=approval.version,
            opened_at=approval.occurred_at,
            correlation_id=approval.correlation_id,
        ),
    )


def _on_challenger(
    current: Experiment | None, approval: ModelApproved, plan: ExperimentPlan
) -> tuple[Experiment, ...]:
    opened = Experiment(
        experiment_id=experiment_id_for(approval),
        model_name=approval.model_name,
        status="running",
        champion_version=approval.champion_version,
        challenger_version=approval.version,
        challenger_share=plan.shares[0],
        opened_at=approval.occurred_at,
        plan=plan,
        correlation_id=approval.correlation_id,
        reasons=plan.declared(),
    )
    if current is None or not current.is_running:
        return (opened,)
    if not is_newer(approval.version, _newest_challenger(current)):
        return ()
    if current.looks == 0:
        # Nothing measured yet, so nothing is thrown away: the newer model replaces it.
        reasons: tuple[str, ...] = ("superseded", "no_look_yet", f"by_version:{approval.version}")
        superseded = current.model_copy(
            update={"status": "superseded", "challenger_share": 0.0, "reasons": reasons}
        )
        return (superseded, opened)
    # Its evidence is worth a verdict: the newer challenger waits for it (the newest only).
    reasons = ("challenger_queued", f"queued_version:{approval.version}")
    return (current.model_copy(update={"queued": approval, "reasons": reasons}),)


def _newest_challenger(current: Experiment) -> str | None:
    return current.queued.version if current.queued else current.challenger_version


def open_queued(concluded: Experiment) -> Experiment | None:
    """The experiment the queued challenger opens once ``concluded`` has ended; else None.

    It faces the champion that serves after the verdict (the promoted challenger, the
    kept champion, or the one a person chose), starts the ramp from its first share
    and keeps the approval's turn of the loop. None while ``concluded`` still runs,
    when nothing is queued, or when the queued version is that champion already.
    """
    approval = concluded.queued
    if approval is None or concluded.is_running:
        return None
    champion = _champion_after(concluded)
    if approval.version == champion:
        return None
    return Experiment(
        experiment_id=experiment_id_for(approval),
        model_name=concluded.model_name,
        status="running",
        champion_version=champion,
        challenger_version=approval.version,
        challenger_share=concluded.plan.shares[0],
        opened_at=concluded.concluded_at or approval.occurred_at,
        plan=concluded.plan,
        correlation_id=approval.correlation_id,
        reasons=(
            "queued_challenger_opened",
            f"after:{concluded.experiment_id}",
            *concluded.plan.declared(),
        ),
    )


def _champion_after(concluded: Experiment) -> str:
    if concluded.override is not None:
        return concluded.override.champion_version
    if concluded.status == "promoted" and concluded.challenger_version is not None:
        return concluded.challenger_version
    return concluded.champion_version


def is_newer(version: str, than: str | None) -> bool:
    """Whether registry version ``version`` comes after ``than`` (numeric when both are).

    >>> is_newer("10", "9"), is_newer("3", "3"), is_newer("2", None)
    (True, False, True)
    """
    if than is None:
        return True
    if version.isdigit() and than.isdigit():
        return int(version) > int(than)
    return version != than
