"""A poll of outcome events as one change per model, applied in one step.

The router consumes ``prediction-logged``, ``prediction-failed`` and
``feedback-received`` in batches. Each event becomes a few changes to its
experiment's tally (``tally`` computes the increments); the changes of one
model are applied together, in one Redis round trip, and only if the event's
Kafka offset is above the one its partition last applied for that model: the
applied offset is stored with the counts, in the same step, so a redelivered
batch (a crash before the commit, a rebalance, a zombie replica) changes
nothing twice. Content markers (one assignment per unit, one request, one label
per prediction) still guard what the offset cannot see: the same outcome
published twice, at two offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from services.router.core.outcomes import Label, LabelStatus, PendingOutcome
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
from shared.events import FeedbackReceived, PredictionFailed, PredictionLogged


class CountOnce(NamedTuple):
    """Increments added to an experiment's counters once per ``marker``."""

    experiment_id: str
    marker: str
    increments: dict[str, float]


class OpenWindow(NamedTuple):
    """A routed prediction's outcome window, opened unless open or closed already."""

    experiment_id: str
    pending: PendingOutcome


class KeepLabel(NamedTuple):
    """A label kept for its open window; once the window has closed, ``late`` is counted."""

    experiment_id: str
    request_id: str
    label: Label
    late: CountOnce


Change = CountOnce | OpenWindow | KeepLabel


class Source(NamedTuple):
    """Where an event was read: its Kafka topic and partition, and its offset there."""

    partition: str
    offset: int


class EventChanges(NamedTuple):
    """One event's changes; ``source`` None for an event handed over outside Kafka."""

    source: Source | None
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class ModelBatch:
    """A model's share of one poll, in offset order."""

    model_name: str
    events: tuple[EventChanges, ...]

    @property
    def experiment_ids(self) -> list[str]:
        """The experiments the batch changes, in the order they first appear."""
        return list(dict.fromkeys(c.experiment_id for e in self.events for c in e.changes))


@dataclass(frozen=True)
class Applied:
    """What applying a model's batch did: events skipped as redelivered, labels by status."""

    redelivered: int = 0
    labels: dict[LabelStatus, int] = field(default_factory=dict)


def partition_of(topic: str, partition: int) -> str:
    """The name an applied offset is stored under.

    >>> partition_of("prediction-logged", 3)
    'prediction-logged:3'
    """
    return f"{topic}:{partition}"


def routed(event: PredictionLogged | PredictionFailed | FeedbackReceived) -> str | None:
    """The experiment an event counts for, or None (outside any, or a shadow answer)."""
    if event.experiment_id is None or not event.challenger_share:
        return None
    if isinstance(event, PredictionLogged) and event.shadow:
        return None  # the challenger's answer to a mirrored request: nobody saw it
    return event.experiment_id


def prediction_changes(event: PredictionLogged) -> tuple[Change, ...]:
    """One assignment per unit and period, latency once per request, the row's window.

    >>> from shared.events import PredictionLogged
    >>> p = PredictionLogged(producer="t", request_id="r", model_name="m", version="2",
    ...     variant="challenger", features={}, predicted_class="a", latency_ms=1.0,
    ...     experiment_id="e", challenger_share=0.5)
    >>> [type(c).__name__ for c in prediction_changes(p)]
    ['CountOnce', 'CountOnce', 'OpenWindow']
    >>> prediction_changes(p.model_copy(update={"shadow": True}))
    ()
    """
    exp = routed(event)
    if exp is None:
        return ()
    unit = f"unit:{exp}:{stratum_of(event)}:{unit_of(event)}"
    request = f"request:{exp}:{event.correlation_id}"
    return (
        CountOnce(exp, unit, assignment_increments(event)),
        CountOnce(exp, request, request_increments(event)),
        OpenWindow(exp, pending_of(event)),
    )


def failure_changes(event: PredictionFailed) -> tuple[Change, ...]:
    """The errors of one failed request, against the variant that answered it."""
    exp = routed(event)
    if exp is None:
        return ()
    return (CountOnce(exp, event.event_id, failure_increments(event)),)


def feedback_changes(event: FeedbackReceived) -> tuple[Change, ...]:
    """One label for its outcome window (a late one counted once as late)."""
    exp = routed(event)
    if exp is None:
        return ()
    late = CountOnce(exp, event.event_id, late_increments(event))
    return (KeepLabel(exp, event.request_id, label_of(event), late),)


E = TypeVar("E", PredictionLogged, PredictionFailed, FeedbackReceived)


def by_model(
    events: Iterable[tuple[E, Source | None]], changes_of: Callable[[E], Sequence[Change]]
) -> list[ModelBatch]:
    """Each model's changes, in the order the events came; events that change nothing left out.

    >>> from shared.events import PredictionFailed
    >>> def failed(model, exp):
    ...     return PredictionFailed(producer="t", request_id="r", model_name=model, version="2",
    ...         variant="challenger", error_type="E", latency_ms=1.0, experiment_id=exp,
    ...         challenger_share=0.5)
    >>> batches = by_model([(failed("a", "e1"), Source("t:0", 7)), (failed("b", "e2"), None),
    ...     (failed("a", None), Source("t:0", 8))], failure_changes)
    >>> [(b.model_name, len(b.events), b.experiment_ids) for b in batches]
    [('a', 1, ['e1']), ('b', 1, ['e2'])]
    """
    grouped: dict[str, list[EventChanges]] = {}
    for event, source in events:
        changes = tuple(changes_of(event))
        if changes:
            grouped.setdefault(event.model_name, []).append(EventChanges(source, changes))
    return [ModelBatch(model, tuple(changes)) for model, changes in grouped.items()]
