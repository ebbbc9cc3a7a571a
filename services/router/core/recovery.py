"""What the router serves when Redis comes back without its state: the registry's aliases.

Redis (append-only file) is where experiments, their outcome counts and the
routing table live; a restart keeps them. When Redis comes back *empty* (its
data directory lost, a ``FLUSHALL``), the counts cannot be rebuilt from anywhere:
no experiment can be judged on them, so none is resumed. MLflow's aliases are
durable and name the champion: it serves alone. A ``challenger`` alias means an
experiment was running and is lost; the router says so loudly (metric, alert,
log) instead of letting a gateway keep routing to it.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from services.router.core.experiment import Experiment

_REBUILT_NAMESPACE = uuid.UUID("8d3b6f0a-71c2-4e5d-9b1a-3c4e5f607182")

#: Reason codes of a rebuilt state: a lost experiment, or only the routing table.
STATE_LOST = "state_lost"
STATE_REBUILT = "state_rebuilt"


def rebuilt_state(
    model_name: str, champion: str | None, challenger: str | None, now: datetime
) -> Experiment | None:
    """The champion-only state the aliases describe; None when there is no champion.

    >>> from datetime import UTC
    >>> now = datetime(2026, 1, 1, tzinfo=UTC)
    >>> state = rebuilt_state("m", "3", "4", now)
    >>> state.status, state.champion_version, state.challenger_share, state.reasons
    ('champion_only', '3', 0.0, ('state_lost',))
    >>> rebuilt_state("m", "3", None, now).reasons
    ('state_rebuilt',)
    >>> rebuilt_state("m", None, "4", now) is None
    True
    """
    if champion is None:
        return None
    key = f"{model_name}:{champion}:{now.isoformat()}"
    return Experiment(
        experiment_id=str(uuid.uuid5(_REBUILT_NAMESPACE, key)),
        model_name=model_name,
        status="champion_only",
        champion_version=champion,
        opened_at=now,
        reasons=(STATE_LOST if challenger is not None else STATE_REBUILT,),
    )
