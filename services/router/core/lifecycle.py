"""What a look does to a running experiment: ramp, hold, promote, roll back or give up.

An experiment that has not decided by its maximum duration (or its per-arm cap)
ends ``inconclusive``, held or not: the champion keeps serving alone.

Pure: the experiment, its statistics and the clock in; the next state out. The
handler publishes ``experiment-updated`` whenever ``state_changed`` says so.
"""

from __future__ import annotations

from datetime import datetime

from services.router.core.decision import Decision, ExperimentStats, evaluate
from services.router.core.experiment import Experiment
from shared.events import Action, ExperimentStatus


def labelled_total(s: ExperimentStats) -> int:
    """Labelled outcomes (or rewards) of both arms whose windows have closed."""
    return s.champion.outcomes + s.challenger.outcomes


def _challenger_outcomes(s: ExperimentStats) -> int:
    return s.challenger.outcomes


def overdue(experiment: Experiment, now: datetime) -> bool:
    """Whether the experiment has run past its maximum duration."""
    return (now - experiment.opened_at).total_seconds() > experiment.plan.max_duration_s


def look_due(experiment: Experiment, s: ExperimentStats, now: datetime | None = None) -> bool:
    """Whether enough new outcomes arrived since the last look, or time is up."""
    if not experiment.is_running:
        return False
    if now is not None and overdue(experiment, now):
        return True  # a held or starved experiment still ends
    return labelled_total(s) - experiment.looked_at_labelled >= experiment.plan.look_every


def look(experiment: Experiment, s: ExperimentStats, now: datetime) -> Experiment:
    """The experiment after one look at ``s``: the decision applied to the ramp."""
    decision = evaluate(s, experiment.plan.decision, experiment.bounds)
    action, reasons = _action(experiment, decision, now)
    looked = experiment.model_copy(
        update={
            "bounds": decision.bounds,
            "last_look": decision,
            "looks": experiment.looks + 1,
            "looked_at_labelled": labelled_total(s),
            "decision": action,
            "reasons": reasons,
        }
    )
    if action == "rollback":
        return _conclude(looked, "rolled_back", now)
    if action == "inconclusive":
        return _conclude(looked, "inconclusive", now)
    if action == "promote" and experiment.is_final_stage:
        return _conclude(looked, "promoted", now)
    if action in ("promote", "continue") and _stage_done(experiment, s):
        return _advance(looked, s)
    return looked


def _action(
    experiment: Experiment, decision: Decision, now: datetime
) -> tuple[Action, tuple[str, ...]]:
    # A hold ends too: a split that stays broken must not keep a challenger forever.
    if overdue(experiment, now) and decision.action in ("continue", "hold"):
        return "inconclusive", ("max_duration", *decision.reasons)
    return decision.action, decision.reasons


def _stage_done(experiment: Experiment, s: ExperimentStats) -> bool:
    if experiment.is_final_stage:
        return False
    return (
        _challenger_outcomes(s) - experiment.stage_base_labelled
        >= experiment.plan.stage_min_labelled
    )


def _advance(experiment: Experiment, s: ExperimentStats) -> Experiment:
    step = experiment.ramp_step + 1
    return experiment.model_copy(
        update={
            "ramp_step": step,
            "challenger_share": experiment.plan.shares[step],
            "stage_base_labelled": _challenger_outcomes(s),
            "reasons": ("ramp", *experiment.reasons),
        }
    )


def _conclude(experiment: Experiment, status: ExperimentStatus, now: datetime) -> Experiment:
    return experiment.model_copy(
        update={
            "status": status,
            "challenger_share": 0.0,
            "concluded_at": now,
            "actions_pending": True,
        }
    )


def state_changed(before: Experiment, after: Experiment) -> bool:
    """Whether ``after`` differs from ``before`` in what the routing table or a reader sees."""

    def key(e: Experiment) -> tuple[object, ...]:
        return (e.status, e.challenger_share, e.ramp_step, e.decision == "hold")

    return key(before) != key(after)
