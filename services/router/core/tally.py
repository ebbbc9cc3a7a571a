"""Sufficient statistics as Redis hash increments, and back.

Counters are keyed ``{stratum}|{arm}:{field}``, the stratum being the challenger
share in force when the unit was routed, so every statistic can be estimated
within its allocation period. Each event adds to a few counters once (a marker
per event, per request and per unit); outcomes are added when their attribution
window closes (``core.outcomes``).
"""

from __future__ import annotations

import bisect
import math
from datetime import datetime

from services.router.core.arms import (
    LATENCY_EDGES_MS,
    ArmStats,
    ExperimentStats,
    StratumStats,
    share_key,
)
from services.router.core.outcomes import Label, PendingOutcome
from shared.events import FeedbackReceived, PredictionFailed, PredictionLogged

REWARD_SHIFT_FIELD = "reward_shift"
LOSS_SHIFT_FIELD = "loss_shift"
_ARM_FIELDS = tuple(f for f in ArmStats.model_fields if f != "latency_bins")


def latency_bin(latency_ms: float) -> int:
    """Index of the log-spaced bin holding ``latency_ms``.

    >>> latency_bin(0.05), latency_bin(1.0), latency_bin(1e9)
    (0, 10, 60)
    """
    return min(bisect.bisect_left(LATENCY_EDGES_MS, latency_ms), len(LATENCY_EDGES_MS) - 1)


def stratum_of(event: PredictionLogged | PredictionFailed | FeedbackReceived) -> str:
    """The allocation period an event belongs to: the split it was routed under."""
    return share_key(event.challenger_share or 0.0)


def unit_of(event: PredictionLogged) -> str:
    """The unit that was assigned: the entity when the split hashed one, else the request.

    Rows of one batch request share its ``correlation_id``: a 1,000-row batch is one
    assignment, so it cannot fake a sample-ratio mismatch.
    """
    if event.entity_id is not None:
        return f"entity:{event.entity_id}"
    return f"request:{event.correlation_id}"


def assignment_increments(event: PredictionLogged) -> dict[str, float]:
    """One assigned unit in the event's stratum and arm (count it once per unit)."""
    return {f"{stratum_of(event)}|{event.variant}:assigned": 1}


def request_increments(event: PredictionLogged) -> dict[str, float]:
    """One answered request, with its latency (count it once per request)."""
    key = f"{stratum_of(event)}|{event.variant}:"
    log_ms = math.log(max(event.latency_ms, 1e-3))
    return {
        key + "requests": 1,
        key + "latency_n": 1,
        key + "log_latency_sum": log_ms,
        key + "log_latency_sumsq": log_ms * log_ms,
        key + f"latency_bin:{latency_bin(event.latency_ms)}": 1,
    }


def failure_increments(event: PredictionFailed) -> dict[str, float]:
    """One failed request: an error, a request and an assigned unit of its arm.

    Failed requests count as assignments so that a failing arm shows up as errors,
    not as a sample-ratio mismatch (which would hold the experiment instead of
    letting the error guardrail roll it back).

    >>> from shared.events import PredictionFailed
    >>> failed = PredictionFailed(producer="t", request_id="r", model_name="m", version="2",
    ...     variant="challenger", error_type="ValueError", rows=3, latency_ms=1.0,
    ...     experiment_id="e", challenger_share=0.25)
    >>> failure_increments(failed)
    {'0.25|challenger:errors': 1, '0.25|challenger:requests': 1, '0.25|challenger:assigned': 1}
    """
    key = f"{stratum_of(event)}|{event.variant}:"
    return {key + "errors": 1, key + "requests": 1, key + "assigned": 1}


def late_increments(event: FeedbackReceived) -> dict[str, float]:
    """A label that came after its prediction's window had closed (reported, not used)."""
    return {f"{stratum_of(event)}|{event.variant}:late": 1}


def pending_of(event: PredictionLogged) -> PendingOutcome:
    """The open outcome window of a routed prediction."""
    return PendingOutcome(
        request_id=event.request_id,
        arm=event.variant,
        stratum=stratum_of(event),
        predicted_at=event.occurred_at.timestamp(),
    )


def label_of(event: FeedbackReceived) -> Label:
    """The label (reward, or a regressor's error) a feedback event brings, stamped with its time.

    A regressor's feedback keeps its signed error, predicted − true: the experiment's
    loss (squared or absolute) is taken from it when the window closes.
    """
    error = None
    if event.predicted_value is not None and event.true_value is not None:
        error = event.predicted_value - event.true_value
    return Label(
        correct=event.correct, reward=event.reward, error=error, at=_seconds(event.occurred_at)
    )


def _seconds(at: datetime) -> float:
    return at.timestamp()


def stats_from_counters(counters: dict[str, float], open_outcomes: int = 0) -> ExperimentStats:
    """The experiment's statistics from its hash (missing counters are zero).

    >>> s = stats_from_counters({"0.1|challenger:labelled": 3.0, "0.5|challenger:labelled": 2.0})
    >>> s.challenger.labelled, sorted(s.strata)
    (5, ['0.1', '0.5'])
    """
    by_stratum: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in counters.items():
        stratum, sep, rest = key.partition("|")
        if not sep:
            continue
        arm, _, field = rest.partition(":")
        by_stratum.setdefault(stratum, {}).setdefault(arm, {})[field] = value
    strata = {
        stratum: StratumStats(
            champion=_arm(arms.get("champion", {})), challenger=_arm(arms.get("challenger", {}))
        )
        for stratum, arms in sorted(by_stratum.items(), key=lambda item: float(item[0]))
    }
    return ExperimentStats(
        strata=strata,
        reward_shift=counters.get(REWARD_SHIFT_FIELD, 0.0),
        loss_shift=counters.get(LOSS_SHIFT_FIELD, 0.0),
        open_outcomes=open_outcomes,
    )


def _arm(fields: dict[str, float]) -> ArmStats:
    values: dict[str, float | int] = {}
    for name in _ARM_FIELDS:
        value = fields.get(name, 0.0)
        values[name] = round(value) if ArmStats.model_fields[name].annotation is int else value
    bins = [0] * len(LATENCY_EDGES_MS)
    for field, count in fields.items():
        if field.startswith("latency_bin:"):
            bins[int(field.removeprefix("latency_bin:"))] = round(count)
    return ArmStats.model_validate({**values, "latency_bins": tuple(bins)})
