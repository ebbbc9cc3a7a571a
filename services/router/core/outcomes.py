"""Outcome (attribution) windows: when a prediction's outcome enters the statistics.

Labels arrive late, and often later for one kind of outcome than another. During
a ramp the challenger's predictions are younger, so counting labels as they
arrive favours whichever outcome is labelled sooner. Every experiment therefore
fixes a window when it opens; a prediction's outcome counts only once its window
has closed, the same way for both arms: labelled within the window → counted
with its label; no label by then → counted as unlabelled (an input of the
label-rate guardrail, not of accuracy). Labels after the window are ignored for
decisions and counted as ``late``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import Variant
from shared.spec import RegressionLoss

#: What became of a label: kept for its open window, or ignored.
LabelStatus = Literal["open", "late", "duplicate"]
#: A regressor's per-outcome loss, as the spec names it.
LossKind = RegressionLoss


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OutcomeWindow(_Frozen):
    """How long after its prediction an outcome may still be labelled."""

    seconds: float = Field(30.0, gt=0, description="Window after the prediction, in seconds.")
    predictions: int = Field(
        0, ge=0, description="Or until this many later predictions of the experiment (0: off)."
    )
    grace_seconds: float = Field(
        10.0,
        ge=0,
        description="Allowed lateness: how long past its end a window waits for events in flight.",
    )


class PendingOutcome(_Frozen):
    """A routed prediction whose outcome window is open."""

    request_id: str
    arm: Variant
    stratum: str = Field(description="The challenger share in force when it was routed.")
    predicted_at: float = Field(description="Prediction time, seconds since the epoch.")
    seq: int = Field(0, description="Its position among the experiment's predictions.")


class Label(_Frozen):
    """Feedback on one prediction, with when it came (time and prediction count)."""

    correct: bool | None = None
    reward: float | None = None
    error: float | None = Field(None, description="A regressor's predicted − true value.")
    at: float = Field(description="Feedback time, seconds since the epoch.")
    seq: int = Field(0, description="The experiment's prediction count when it came.")


@dataclass(frozen=True)
class Closing:
    """Windows found closed at one look, with their labels, and the stored shifts."""

    outcomes: list[tuple[PendingOutcome, Label | None]]
    reward_shift: float | None
    loss_shift: float | None = None


@dataclass(frozen=True)
class Closed:
    """Each closing request's counters, and the shifts its sums were taken around."""

    increments: dict[str, dict[str, float]]
    reward_shift: float | None
    loss_shift: float | None = None


def loss_of(error: float, kind: LossKind) -> float:
    """The per-outcome loss of a regressor's error (predicted − true).

    >>> loss_of(-3.0, "squared"), loss_of(-3.0, "absolute")
    (9.0, 3.0)
    """
    return error * error if kind == "squared" else abs(error)


def closes_by(pending: PendingOutcome, now: float, seq_now: int, window: OutcomeWindow) -> bool:
    """Whether ``pending``'s window has closed at time ``now`` after ``seq_now`` predictions.

    >>> p = PendingOutcome(request_id="r", arm="champion", stratum="0.05", predicted_at=100.0,
    ...     seq=7)
    >>> closes_by(p, 159.0, 8, OutcomeWindow(seconds=60)), closes_by(p, 140.0, 8, OutcomeWindow())
    (False, True)
    >>> closes_by(p, 135.0, 8, OutcomeWindow())  # ended at 130, waits 10 s for events in flight
    False
    >>> closes_by(p, 101.0, 17, OutcomeWindow(seconds=60, predictions=10))
    True
    """
    # Whether a label was in time is judged on event time (``in_window``); the grace only
    # keeps the window open for feedback still in the consumer's lag, so a slow consumer
    # does not turn timely labels into missing ones.
    if now >= pending.predicted_at + window.seconds + window.grace_seconds:
        return True
    return window.predictions > 0 and seq_now - pending.seq >= window.predictions


def due_cutoffs(now: float, seq_now: int, window: OutcomeWindow) -> tuple[float, int | None]:
    """Predicted at or before the first, or numbered at or below the second: closed.

    >>> due_cutoffs(160.0, 17, OutcomeWindow(seconds=60, predictions=10, grace_seconds=0))
    (100.0, 7)
    >>> due_cutoffs(160.0, 17, OutcomeWindow(seconds=60))
    (90.0, None)
    """
    seq_cutoff = seq_now - window.predictions if window.predictions > 0 else None
    return now - window.seconds - window.grace_seconds, seq_cutoff


def in_window(pending: PendingOutcome, label: Label, window: OutcomeWindow) -> bool:
    """Whether ``label`` came before ``pending``'s window closed.

    >>> p = PendingOutcome(request_id="r", arm="champion", stratum="0.05", predicted_at=100.0)
    >>> in_window(p, Label(correct=True, at=150.0), OutcomeWindow(seconds=60))
    True
    >>> in_window(p, Label(correct=True, at=170.0), OutcomeWindow(seconds=60))
    False
    """
    if label.at > pending.predicted_at + window.seconds:
        return False
    return window.predictions == 0 or label.seq - pending.seq < window.predictions


def closing_increments(
    pending: PendingOutcome,
    label: Label | None,
    window: OutcomeWindow,
    reward_shift: float,
    loss: LossKind | None = None,
    loss_shift: float = 0.0,
) -> dict[str, float]:
    """The counters one closed window adds to its stratum and arm.

    ``loss`` is the experiment's loss when it compares regressors: a label's error
    then adds to the loss sums (shifted by ``loss_shift``).

    >>> p = PendingOutcome(request_id="r", arm="challenger", stratum="0.5", predicted_at=0.0)
    >>> closing_increments(p, Label(correct=True, at=5.0), OutcomeWindow(), 0.0)
    {'0.5|challenger:closed': 1, '0.5|challenger:labelled': 1, '0.5|challenger:correct': 1}
    >>> closing_increments(p, None, OutcomeWindow(), 0.0)
    {'0.5|challenger:closed': 1}
    >>> closing_increments(p, Label(reward=10.5, at=99.0), OutcomeWindow(), 10.0)
    {'0.5|challenger:closed': 1, '0.5|challenger:late': 1}
    >>> closing_increments(p, Label(error=-3.0, at=5.0), OutcomeWindow(), 0.0, "squared", 4.0)
    {'0.5|challenger:closed': 1, '0.5|challenger:loss_n': 1, '0.5|challenger:loss_sum': 5.0, \
'0.5|challenger:loss_sumsq': 25.0}
    """
    key = f"{pending.stratum}|{pending.arm}:"
    counts: dict[str, float] = {key + "closed": 1}
    if label is None:
        return counts
    if not in_window(pending, label, window):
        return counts | {key + "late": 1}
    if label.correct is not None:
        counts |= {key + "labelled": 1, key + "correct": int(label.correct)}
    if label.reward is not None:
        counts |= _shifted_sums(key + "reward_", label.reward - reward_shift)
    if loss is not None and label.error is not None:
        shifted = loss_of(label.error, loss) - loss_shift
        if math.isfinite(shifted * shifted):
            counts |= _shifted_sums(key + "loss_", shifted)
        else:  # its square overflows a float: counted and reported, never silently capped
            counts |= {key + "loss_overflow": 1}
    return counts


def _shifted_sums(prefix: str, shifted: float) -> dict[str, float]:
    return {prefix + "n": 1, prefix + "sum": shifted, prefix + "sumsq": shifted * shifted}


def reward_shift_for(
    stored: float | None, closing: list[tuple[PendingOutcome, Label | None]]
) -> float | None:
    """The experiment's reward shift: the stored one, else the first reward now closing.

    Any constant works; one near the mean keeps the shifted sums small. None while
    no reward has been seen (nothing to shift).

    >>> p = PendingOutcome(request_id="r", arm="champion", stratum="0.5", predicted_at=0.0)
    >>> reward_shift_for(None, [(p, None), (p, Label(reward=1e8, at=1.0))])
    100000000.0
    >>> reward_shift_for(3.0, [(p, Label(reward=1e8, at=1.0))]), reward_shift_for(None, [])
    (3.0, None)
    """
    if stored is not None:
        return stored
    rewards = [lab.reward for _, lab in closing if lab is not None and lab.reward is not None]
    return rewards[0] if rewards else None


def loss_shift_for(
    stored: float | None, closing: list[tuple[PendingOutcome, Label | None]], loss: LossKind
) -> float | None:
    """The experiment's loss shift: the stored one, else the loss of the first error closing.

    >>> p = PendingOutcome(request_id="r", arm="champion", stratum="0.5", predicted_at=0.0)
    >>> loss_shift_for(None, [(p, Label(correct=True, at=1.0)), (p, Label(error=-2.0, at=1.0))],
    ...     "squared")
    4.0
    """
    if stored is not None:
        return stored
    errors = [lab.error for _, lab in closing if lab is not None and lab.error is not None]
    shift = loss_of(errors[0], loss) if errors else None
    return shift if shift is not None and math.isfinite(shift) else None


def close_increments(
    closing: Closing, window: OutcomeWindow, loss: LossKind | None = None
) -> Closed:
    """Each closing request's counters, and the shifts they were summed around."""
    shift = reward_shift_for(closing.reward_shift, closing.outcomes)
    lshift = None if loss is None else loss_shift_for(closing.loss_shift, closing.outcomes, loss)
    increments = {
        pending.request_id: closing_increments(
            pending, label, window, shift or 0.0, loss, lshift or 0.0
        )
        for pending, label in closing.outcomes
    }
    return Closed(increments, shift, lshift)


def encode_pending(p: PendingOutcome) -> str:
    """A compact text form for storage.

    >>> encode_pending(PendingOutcome(request_id="r", arm="champion", stratum="0.05",
    ...     predicted_at=1.5, seq=3))
    'champion|0.05|1.5|3'
    """
    return f"{p.arm}|{p.stratum}|{p.predicted_at!r}|{p.seq}"


def decode_pending(request_id: str, text: str) -> PendingOutcome:
    """The inverse of ``encode_pending``.

    >>> decode_pending("r", "champion|0.05|1.5|3").seq
    3
    """
    arm, stratum, at, seq = text.split("|")
    return PendingOutcome.model_validate(
        {"request_id": request_id, "arm": arm, "stratum": stratum, "predicted_at": at, "seq": seq}
    )


def encode_label(label: Label) -> str:
    """A compact text form for storage (empty fields for what the feedback lacks).

    >>> encode_label(Label(correct=False, at=2.0, seq=9))
    '0|||2.0|9'
    >>> encode_label(Label(error=-1.5, at=2.0, seq=9))
    '||-1.5|2.0|9'
    """
    return "|".join(
        (
            "" if label.correct is None else str(int(label.correct)),
            _optional(label.reward),
            _optional(label.error),
            repr(label.at),
            str(label.seq),
        )
    )


def _optional(value: float | None) -> str:
    return "" if value is None else repr(value)


def decode_label(text: str) -> Label:
    """The inverse of ``encode_label`` (a label a router kept before errors existed too).

    >>> decode_label("1|2.5||3.0|4")
    Label(correct=True, reward=2.5, error=None, at=3.0, seq=4)
    >>> decode_label("1|2.5|3.0|4")  # without the error field
    Label(correct=True, reward=2.5, error=None, at=3.0, seq=4)
    """
    parts = text.split("|")
    if len(parts) == 4:
        parts.insert(2, "")
    correct, reward, error, at, seq = parts
    return Label(
        correct=None if correct == "" else correct == "1",
        reward=None if reward == "" else float(reward),
        error=None if error == "" else float(error),
        at=float(at),
        seq=int(seq),
    )
