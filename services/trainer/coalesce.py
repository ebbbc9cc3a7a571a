"""When pending triggers become one training: a quiet window and a row minimum for data,
at once for drift, a person's request or the schedule.

Pure: pending triggers and a clock reading in, a decision out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shared.events import (
    DataArrived,
    DriftDetected,
    Event,
    ModelRejected,
    ModelTrained,
    RetrainModel,
    Trigger,
)

Decision = Literal["idle", "wait", "too_few_rows", "train"]

TriggerEvent = DataArrived | DriftDetected | RetrainModel
"""What asks for a training: data, drift, a person or the schedule."""


@dataclass(frozen=True)
class PendingArrival:
    """A trigger waiting to be trained on, with when the trainer received it.

    Data arrivals wait for their burst to end; any other trigger trains at the
    worker's next turn (and covers the data arrivals pending beside it).
    """

    event: TriggerEvent
    received_at: float
    trigger: Trigger = "data"


@dataclass(frozen=True)
class StagedOutcome:
    """A finished training's event, kept until published, and the triggers it answers.

    Written under the lease before the event is published: a crash after that
    publishes this same event (same id, so consumers drop a repeat) instead of
    training again.
    """

    outcome: ModelTrained | ModelRejected
    covered: tuple[str, ...]


@dataclass(frozen=True)
class CoalescePolicy:
    """Train once arrivals have been quiet for ``window_s`` (or waited ``max_wait_s``).

    A burst of events inside the window becomes one training; fewer than
    ``min_rows`` new rows keep waiting for more data.
    """

    window_s: float = 1.0
    max_wait_s: float = 30.0
    min_rows: int = 1

    def decide(self, pending: Sequence[PendingArrival], now: float) -> Decision:
        """What to do with ``pending`` at time ``now``.

        >>> from shared.events import DatasetRef
        >>> ref = DatasetRef(uri="file:///b.parquet", sha256="a" * 64, rows=500)
        >>> burst = [PendingArrival(DataArrived(producer="t", dataset=ref), t) for t in (0, 1)]
        >>> policy = CoalescePolicy(window_s=2, max_wait_s=10, min_rows=100)
        >>> policy.decide(burst, now=2.5), policy.decide(burst, now=3.0)
        ('wait', 'train')
        >>> CoalescePolicy(min_rows=5000).decide(burst, now=60)
        'too_few_rows'
        """
        if not pending:
            return "idle"
        if any(p.trigger != "data" for p in pending):
            return "train"
        if new_rows(pending) < self.min_rows:
            return "too_few_rows"
        quiet = now - max(p.received_at for p in pending) >= self.window_s
        overdue = now - min(p.received_at for p in pending) >= self.max_wait_s
        return "train" if quiet or overdue else "wait"


def new_rows(pending: Sequence[PendingArrival]) -> int:
    """Rows in the distinct batches of the data arrivals among ``pending``."""
    by_hash = {
        p.event.dataset.sha256: p.event.dataset.rows
        for p in pending
        if isinstance(p.event, DataArrived)
    }
    return sum(by_hash.values())


def newest(pending: Sequence[PendingArrival]) -> PendingArrival:
    """The trigger a training of ``pending`` answers: the latest one that is not data, if any,
    else the latest arrival.

    Latest by when it happened (``occurred_at``), then by when it was received: the
    triggers of one model may come from several partitions, consumed in any order.

    >>> from shared.events import DatasetRef
    >>> ref = DatasetRef(uri="file:///b.parquet", sha256="a" * 64, rows=500)
    >>> data = PendingArrival(DataArrived(producer="t", dataset=ref), 5.0)
    >>> drift = PendingArrival(RetrainModel(producer="cli", model_name="m"), 1.0, "manual")
    >>> newest([drift, data]).trigger
    'manual'
    """
    asked = [p for p in pending if p.trigger != "data"] or list(pending)
    return sorted(asked, key=lambda p: (p.event.occurred_at, p.received_at))[-1]


def trigger_ids(cause: Event, covered: Sequence[PendingArrival]) -> tuple[str, ...]:
    """Every event a training answers, its cause first, each once."""
    return tuple(dict.fromkeys([cause.event_id, *(p.event.event_id for p in covered)]))
