"""When pending data-arrived triggers become one training: a quiet window and a row minimum.

Pure: pending arrivals and a clock reading in, a decision out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shared.events import DataArrived

Decision = Literal["idle", "wait", "too_few_rows", "train"]


@dataclass(frozen=True)
class PendingArrival:
    """A data-arrived event waiting to be trained on, with when the trainer received it."""

    event: DataArrived
    received_at: float


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
        if new_rows(pending) < self.min_rows:
            return "too_few_rows"
        quiet = now - max(p.received_at for p in pending) >= self.window_s
        overdue = now - min(p.received_at for p in pending) >= self.max_wait_s
        return "train" if quiet or overdue else "wait"


def new_rows(pending: Sequence[PendingArrival]) -> int:
    """Rows in the distinct batches of ``pending``."""
    by_hash = {p.event.dataset.sha256: p.event.dataset.rows for p in pending}
    return sum(by_hash.values())


def newest(pending: Sequence[PendingArrival]) -> DataArrived:
    """The latest arrival (the last added among equal times): what a coalesced training answers."""
    return sorted(pending, key=lambda p: p.received_at)[-1].event
