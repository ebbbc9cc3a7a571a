"""What a look does to a running experiment: ramp, hold, promote, roll back or give up.

Pure: the experiment, its statistics and the clock in; the next state out. The
handler publishes ``experiment-updated`` whenever ``state_changed`` says so.
"""

from __future__ import annotations

from datetime import datetime

from services.router.core.decision import Action, Decision, ExperimentStats, evaluate
from services.router.core.experiment import Experiment


def labelled_total(s: ExperimentStats) -> int:
    """Labelled outcomes (or rewards) of both arms."""
    return s.champion.labelled + s.challenger.labelled + s.champion.reward_n + s.challenger.reward_n


def _challenger_outcomes(s: ExperimentStats) -> int:
    return s.challenger.labelled + s.challenger.reward_n


def look_due(experiment: Experiment, s: ExperimentStats) -> bool:
    """Whether enough new outcomes arrived since the last look."""
    if not experiment.is_running:
        return False
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
    if action in ("rollback", "inconclusive"):
        return _conclude(looked, "rolled_back", now)
    if action == "promote" and experiment.is_final_stage:
        return _conclude(looked, "promoted", now)
    if action in ("promote", "continue") and _stage_done(experiment, s):
        return _advance(looked, s)
    return looked


def _action(
    experiment: Experiment, decision: Decision, now: datetime
) -> tuple[Action, tuple[str, ...]]:
    overdue = (now - experiment.opened_at).total_seconds() > experiment.plan.max_duration_s
    if overdue and decision.action == "continue":
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


def _conclude(experiment: Experiment, status: str, now: datetime) -> Experiment:
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
