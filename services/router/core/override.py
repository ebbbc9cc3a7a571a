"""Operator actions win: a person's promote or rollback ends whatever the router was doing.

Pure: the model's current state and the person's action in, the next state out.
A running experiment (or a verdict whose alias moves are still pending) becomes
``overridden``; otherwise a fresh ``champion_only`` state names the chosen
champion, so the routing table the gateway re-reads never contradicts the
registry's aliases.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from services.router.core.experiment import Experiment, Override
from shared.events import ModelPromoted, ModelRolledBack

_OVERRIDE_NAMESPACE = uuid.UUID("2c7e9a41-5b0d-4f3e-8c61-9d4a0b7e1f23")


def override_of(event: ModelPromoted | ModelRolledBack) -> Override | None:
    """The operator action an event records; None for the router's own verdicts."""
    if event.producer == "router":
        return None  # the router announced a verdict it already applied
    return Override(
        action="promote" if isinstance(event, ModelPromoted) else "rollback",
        champion_version=event.version,
        requested_by=event.requested_by or event.producer,
        reason=event.reason,
        event_id=event.event_id,
        requested_at=event.occurred_at,
    )


def apply_override(
    current: Experiment | None, action: Override, now: datetime
) -> Experiment | None:
    """The state after ``action``; None when it changes nothing.

    Nothing changes when the router holds no state for the model (the gateway then
    follows the aliases), when ``action`` was applied already (a redelivery), or
    when it happened before the current state began (a replay cannot end a newer
    experiment).

    >>> from datetime import UTC, timedelta
    >>> now = datetime(2026, 1, 1, tzinfo=UTC)
    >>> running = Experiment(experiment_id="e", model_name="m", status="running",
    ...     champion_version="4", challenger_version="5", challenger_share=0.05, opened_at=now)
    >>> act = Override(action="rollback", champion_version="3", requested_by="ana",
    ...     reason="bad", event_id="x", requested_at=now + timedelta(minutes=5))
    >>> after = apply_override(running, act, now)
    >>> after.status, after.challenger_share, after.override.champion_version
    ('overridden', 0.0, '3')
    >>> apply_override(after, act, now) is None
    True
    >>> old = act.model_copy(update={"requested_at": now - timedelta(days=1)})
    >>> apply_override(running, old, now) is None
    True
    """
    if current is None or current.override == action or action.requested_at < current.opened_at:
        return None
    codes = (f"manual_{action.action}",)
    if current.is_running or current.actions_pending:
        # A pending verdict is dropped too: its alias moves would undo the person's.
        return current.model_copy(
            update={
                "status": "overridden",
                "challenger_share": 0.0,
                "decision": action.action,
                "reasons": codes,
                "concluded_at": now,
                "actions_pending": False,
                "override": action,
            }
        )
    return Experiment(
        experiment_id=str(uuid.uuid5(_OVERRIDE_NAMESPACE, action.event_id)),
        model_name=current.model_name,
        status="champion_only",
        champion_version=action.champion_version,
        opened_at=action.requested_at,
        decision=action.action,
        reasons=codes,
        override=action,
    )


def served_champion(state: Experiment) -> str:
    """The version the routing table names as champion for ``state``.

    >>> from datetime import UTC
    >>> at = datetime(2026, 1, 1, tzinfo=UTC)
    >>> e = Experiment(experiment_id="e", model_name="m", status="promoted",
    ...     champion_version="1", challenger_version="2", opened_at=at)
    >>> served_champion(e)
    '2'
    """
    if state.override is not None:
        return state.override.champion_version
    if state.status == "promoted" and state.challenger_version is not None:
        return state.challenger_version
    return state.champion_version
