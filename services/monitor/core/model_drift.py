"""One model's drift state: its window against the champion's reference, its accuracy
(a classifier's) or loss (a regressor's) trackers, the ids it already counted, and how
all of it is saved and restored.

Pure: the service layer loads the reference and the saved state, and saves, publishes
and measures what these methods return.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from services.monitor.core.concept import AccuracyCusum
from services.monitor.core.config import DriftConfig
from services.monitor.core.loss import LossCusum, outcome_loss
from services.monitor.core.reference import PREDICTION, Reference
from services.monitor.core.window import BatchOutcome, DriftDetector, WindowMark, WindowVerdict
from shared.events import DriftDetected, FeatureDrift, FeedbackReceived, PredictionLogged

#: State document, row chunks of the open window, closed windows kept for the pooled test.
SavedState = tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]

#: What a saved state that cannot be restored raises while it is read back.
UNRESTORABLE = (ValueError, KeyError, TypeError, IndexError)

#: Drift event ids derive from the window that caused them, so a replay after a
#: crash republishes the same id and consumers drop it as a duplicate.
DRIFT_ID_NAMESPACE = uuid.UUID("6f1c7a52-2f7e-4c1e-9a51-5b0f6a3c9d10")


class Save(NamedTuple):
    """What to save after a change: the state, rows to append, closed windows to pool."""

    state: dict[str, Any]
    rows: dict[str, Any] | None
    restart_rows: bool
    pooled: list[dict[str, Any]]
    keep_pooled: int


@dataclass(frozen=True)
class Counted:
    """A batch counted into the window: what it did, the drift to publish, what to save."""

    outcome: BatchOutcome
    kept: int
    filled: int
    alarms: list[DriftDetected]
    save: Save


@dataclass(frozen=True)
class Judged:
    """One labelled outcome counted: the variant's rolling accuracy (a classifier) or
    rolling mean loss (a regressor), and drift to publish."""

    accuracy: float | None
    drift: DriftDetected | None
    loss: float | None = None


@dataclass
class ModelDrift:
    """One model's drift detector and accuracy or loss trackers against its champion's reference."""

    model_name: str
    detector: DriftDetector
    config: DriftConfig
    accuracy: dict[tuple[str, str], AccuracyCusum] = field(default_factory=dict)
    losses: dict[tuple[str, str], LossCusum] = field(default_factory=dict)
    fired: set[tuple[str, str]] = field(default_factory=set)
    recent: dict[str, None] = field(default_factory=dict)
    unsaved: bool = True
    """Nothing saved yet for this reference: the next save rewrites the whole window."""

    @classmethod
    def start(cls, model_name: str, reference: Reference, config: DriftConfig) -> ModelDrift:
        """An empty window against ``reference``."""
        return cls(model_name, config.detector(reference), config)

    @property
    def reference(self) -> Reference:
        """The champion's reference the window is tested against."""
        return self.detector.reference

    @property
    def testable(self) -> bool:
        """Whether live rows can be tested (the version's sample is there and readable)."""
        return self.reference.testable

    def fresh(self, events: Sequence[PredictionLogged]) -> list[PredictionLogged]:
        """The champion answers not yet counted.

        Shadow answers mirror rows already counted from the champion's answer.
        """
        return [e for e in events if not e.shadow and e.event_id not in self.recent]

    def count(self, events: Sequence[PredictionLogged]) -> Counted:
        """Add ``events``' rows; the alarms their closed windows raise, and what to save."""
        marks = [
            WindowMark(e.occurred_at.isoformat(), e.event_id, e.correlation_id) for e in events
        ]
        outcome = self.detector.add_rows([self._row(e) for e in events], marks)
        kept = len(events) - sum(outcome.rejected.values())
        alarms = [self._data_drift(v) for v in outcome.verdicts if v.alarm]
        self._remember(events)
        return Counted(outcome, kept, self.detector.filled, alarms, self._save(kept, outcome))

    def _row(self, event: PredictionLogged) -> dict[str, float | str]:
        """The event's features, and its answer when the reference holds the model's answers."""
        if not self.reference.tests_predictions:
            return event.features
        answer = (
            event.predicted_value if event.predicted_value is not None else event.predicted_class
        )
        return event.features if answer is None else {**event.features, PREDICTION: answer}

    def judge(self, event: FeedbackReceived) -> Judged | None:
        """Count a labelled outcome; None when it says nothing about accuracy or loss.

        Every labelled outcome counts when it arrives, however late: a classifier's
        into its accuracy, a regressor's (``predicted_value`` and ``true_value``) into
        its loss, each per variant and version.
        """
        if event.predicted_value is not None and event.true_value is not None:
            return self._judge_loss(event, event.predicted_value, event.true_value)
        correct = correct_of(event)
        baseline = self.reference.baseline_accuracy
        if correct is None or baseline is None:
            return None
        tracker = self._tracker((event.variant, event.version))
        verdict = tracker.add(correct)
        if verdict is None:
            return Judged(tracker.rolling_accuracy, None)
        result = FeatureDrift(
            feature="accuracy",
            statistic=verdict.rolling_accuracy,
            p_value=verdict.p_value,
            threshold=verdict.baseline,
            drifted=True,
            test="accuracy",
        )
        return Judged(tracker.rolling_accuracy, self._fire(event, result, verdict.labelled))

    def _judge_loss(self, event: FeedbackReceived, predicted: float, true: float) -> Judged | None:
        baseline, loss = self.reference.baseline_loss, self.reference.loss
        if baseline is None:
            return None
        tracker = self._loss_tracker((event.variant, event.version))
        verdict = tracker.add(outcome_loss(predicted, true, loss))
        if verdict is None:
            return Judged(None, None, tracker.rolling_loss)
        result = FeatureDrift(
            feature=f"{loss}_loss",
            statistic=verdict.rolling_loss,
            p_value=verdict.p_value,
            threshold=verdict.baseline,
            drifted=True,
            test="loss",
        )
        return Judged(None, self._fire(event, result, verdict.labelled), tracker.rolling_loss)

    def _fire(
        self, event: FeedbackReceived, result: FeatureDrift, labelled: int
    ) -> DriftDetected | None:
        """The concept drift to publish for a significant verdict, once per champion version.

        A challenger is measured against the champion's validation baseline, not its
        own, and judged by the router's experiment: alarming on it retrained a new
        challenger that superseded the experiment, again and again, so no experiment
        ever finished.
        """
        key = (event.variant, event.version)
        if key in self.fired or event.variant != "champion":
            return None
        self.fired.add(key)
        return self._concept_drift(event, result, labelled)

    def state(self) -> dict[str, Any]:
        """The JSON-ready state document: window, accuracy trackers, recent ids."""
        accuracy = {
            f"{variant}|{version}": {**t.state(), "fired": (variant, version) in self.fired}
            for (variant, version), t in self.accuracy.items()
        }
        loss = {
            f"{variant}|{version}": {**t.state(), "fired": (variant, version) in self.fired}
            for (variant, version), t in self.losses.items()
        }
        return {
            "window": self.detector.state(),
            "accuracy": accuracy,
            "loss": loss,
            "recent": list(self.recent),
        }

    def saved(self) -> None:
        """The last ``count``'s save was written: later saves append to it."""
        self.unsaved = False

    def state_only(self) -> Save:
        """A save of the state document alone (the window's rows are unchanged)."""
        return Save(self.state(), None, False, [], 0)

    def _save(self, kept: int, outcome: BatchOutcome) -> Save:
        closed = len(outcome.verdicts)
        # A closed window, or a window never saved, is written whole; otherwise appended.
        restart = bool(closed) or self.unsaved
        count = self.detector.filled if restart else kept
        rows = self.detector.rows(last=count) if count else None
        pooled = self.detector.pooled_chunks(closed)
        return Save(self.state(), rows, restart, pooled, self.detector.pooled_windows)

    def _remember(self, events: Sequence[PredictionLogged]) -> None:
        # Ids of the last batches: all that a redelivery after a crash can repeat.
        for event in events:
            self.recent[event.event_id] = None
        while len(self.recent) > self.config.recent_ids:
            del self.recent[next(iter(self.recent))]

    def restore(self, saved: SavedState) -> bool:
        """Continue from ``saved`` when it is this reference's; False when it is another's.

        Raises one of ``UNRESTORABLE`` when the state is inconsistent; this object is then
        half restored and must be dropped.
        """
        state, rows, pooled = saved
        if state["window"]["version"] != self.reference.version:
            return False
        self.detector.restore(state["window"], rows, pooled)
        for key, tracker_state in state["accuracy"].items():
            variant, version = key.split("|", 1)
            self._tracker((variant, version)).restore(tracker_state)
            if tracker_state.get("fired"):
                self.fired.add((variant, version))
        # States saved before regressors were watched have no "loss".
        for key, tracker_state in state.get("loss", {}).items():
            variant, version = key.split("|", 1)
            self._loss_tracker((variant, version)).restore(tracker_state)
            if tracker_state.get("fired"):
                self.fired.add((variant, version))
        self.recent = dict.fromkeys(state["recent"])
        self.unsaved = False
        return True

    def _tracker(self, key: tuple[str, str]) -> AccuracyCusum:
        if key not in self.accuracy:
            self.accuracy[key] = self.config.tracker(self.reference.baseline_accuracy or 0.0)
        return self.accuracy[key]

    def _loss_tracker(self, key: tuple[str, str]) -> LossCusum:
        if key not in self.losses:
            baseline = self.reference.baseline_loss or 0.0
            self.losses[key] = self.config.loss_tracker(baseline, self.reference.loss)
        return self.losses[key]

    def _data_drift(self, verdict: WindowVerdict) -> DriftDetected:
        assert verdict.first is not None
        assert verdict.last is not None
        detector = self.detector
        # Drift opens a new turn of the loop: a fresh correlation id, caused by the
        # prediction that closed the window.
        return DriftDetected(
            event_id=drift_id("data", self.reference.version, verdict.last.event_id),
            producer="monitor",
            causation_id=verdict.last.event_id,
            kind="data",
            model_name=self.model_name,
            reference_version=self.reference.version,
            window_size=detector.window_size,
            reference_size=self.reference.size,
            window_start=datetime.fromisoformat(verdict.first.at),
            window_end=datetime.fromisoformat(verdict.last.at),
            features=tuple(verdict.features),
            pooled_size=detector.pooled.size if detector.pooled else None,
            window_correlation_id=verdict.last.correlation_id,
        )

    def _concept_drift(
        self, event: FeedbackReceived, result: FeatureDrift, labelled: int
    ) -> DriftDetected:
        return DriftDetected(
            event_id=drift_id("concept", event.version, event.event_id),
            producer="monitor",
            causation_id=event.event_id,
            kind="concept",
            model_name=self.model_name,
            reference_version=self.reference.version,
            window_size=min(labelled, self.config.accuracy_rolling),
            reference_size=max(self.reference.size, 1),
            window_start=event.occurred_at,
            window_end=event.occurred_at,
            features=(result,),
            window_correlation_id=event.correlation_id,
            variant=event.variant,
            version=event.version,
        )


def correct_of(event: FeedbackReceived) -> bool | None:
    """Whether the prediction was right, when the feedback says so."""
    if event.correct is not None:
        return event.correct
    if event.true_label is not None and event.predicted_class is not None:
        return event.true_label == event.predicted_class
    return None


def drift_id(kind: str, version: str, cause: str) -> str:
    """The deterministic id of a drift event: a replay republishes the same id.

    >>> drift_id("data", "7", "e1") == drift_id("data", "7", "e1") != drift_id("data", "8", "e1")
    True
    """
    return str(uuid.uuid5(DRIFT_ID_NAMESPACE, f"{kind}:{version}:{cause}"))
