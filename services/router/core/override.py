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
    )


def apply_override(
    current: Experiment | None, action: Override, model_name: str, now: datetime
) -> Experiment | None:
    """The state after ``action``; None when it was applied already (a redelivery).

    >>> from datetime import UTC
    >>> now = datetime(2026, 1, 1, tzinfo=UTC)
    >>> running = Experiment(experiment_id="e", model_name="m", status="running",
    ...     champion_version="4", challenger_version="5", challenger_share=0.05, opened_at=now)
    >>> act = Override(action="rollback", champion_version="3", requested_by="ana",
    ...     reason="bad", event_id="x")
    >>> after = apply_override(running, act, "m", now)
    >>> after.status, after.challenger_share, after.override.champion_version
    ('overridden', 0.0, '3')
    >>> apply_override(after, act, "m", now) is None
    True
    """
    if current is not None and current.override is not None and current.override == action:
        return None
    codes = (f"manual_{action.action}",)
    if current is not None and (current.is_running or current.actions_pending):
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
        model_name=model_name,
        status="champion_only",
        champion_version=action.champion_version,
        opened_at=now,
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
