"""Sufficient statistics as Redis hash increments, and back.

Each event adds to a few counters of its experiment's hash; every statistic in
a report is recomputed from those counters alone.
"""

from __future__ import annotations

import bisect
import math

from services.router.core.decision import LATENCY_EDGES_MS, ArmStats, ExperimentStats, SplitTotals
from shared.events import FeedbackReceived, PredictionFailed, PredictionLogged

_ARM_FIELDS = tuple(f for f in ArmStats.model_fields if f != "latency_bins")


def _share_key(share: float) -> str:
    return f"{share:.6g}"


def latency_bin(latency_ms: float) -> int:
    """Index of the log-spaced bin holding ``latency_ms``.

    >>> latency_bin(0.05), latency_bin(1.0), latency_bin(1e9)
    (0, 10, 60)
    """
    return min(bisect.bisect_left(LATENCY_EDGES_MS, latency_ms), len(LATENCY_EDGES_MS) - 1)


def prediction_increments(event: PredictionLogged) -> dict[str, float]:
    """Counters one routed prediction adds: an assignment, its latency, its split."""
    arm, share = event.variant, event.challenger_share or 0.0
    log_ms = math.log(max(event.latency_ms, 1e-3))
    return {
        f"{arm}:assigned": 1,
        f"{arm}:latency_n": 1,
        f"{arm}:log_latency_sum": log_ms,
        f"{arm}:log_latency_sumsq": log_ms * log_ms,
        f"{arm}:latency_bin:{latency_bin(event.latency_ms)}": 1,
        f"split:assigned:{_share_key(share)}": 1,
        f"split:{arm}_assigned:{_share_key(share)}": 1,
    }


def failure_increments(event: PredictionFailed) -> dict[str, float]:
    """Counters one failed request adds: its rows as errors, and as assignments of the split.

    Failed rows count in the split so that a failing arm shows up as errors, not
    as a sample-ratio mismatch (which would hold the experiment instead of
    letting the error guardrail roll it back).

    >>> from shared.events import PredictionFailed
    >>> failed = PredictionFailed(producer="t", request_id="r", model_name="m", version="2",
    ...     variant="challenger", error_type="ValueError", rows=3, latency_ms=1.0,
    ...     experiment_id="e", challenger_share=0.25)
    >>> failure_increments(failed)["challenger:errors"]
    3
    """
    arm, share = event.variant, event.challenger_share or 0.0
    return {
        f"{arm}:errors": event.rows,
        f"split:assigned:{_share_key(share)}": event.rows,
        f"split:{arm}_assigned:{_share_key(share)}": event.rows,
    }


def feedback_increments(event: FeedbackReceived) -> dict[str, float]:
    """Counters one outcome adds: a label (and whether it was right) or a reward."""
    arm, share = event.variant, event.challenger_share or 0.0
    counts: dict[str, float] = {}
    if event.correct is not None:
        counts |= {f"{arm}:labelled": 1, f"{arm}:correct": int(event.correct)}
        counts[f"split:labelled:{_share_key(share)}"] = 1
        counts[f"split:{arm}_labelled:{_share_key(share)}"] = 1
    if event.reward is not None:
        counts |= {
            f"{arm}:reward_n": 1,
            f"{arm}:reward_sum": event.reward,
            f"{arm}:reward_sumsq": event.reward * event.reward,
        }
    return counts


def stats_from_counters(counters: dict[str, float]) -> ExperimentStats:
    """The experiment's statistics from its hash (missing counters are zero).

    >>> s = stats_from_counters({"challenger:labelled": 3.0, "split:labelled:0.1": 3.0})
    >>> s.challenger.labelled, s.split.labelled
    (3, {'0.1': 3})
    """
    return ExperimentStats(
        champion=_arm(counters, "champion"),
        challenger=_arm(counters, "challenger"),
        split=SplitTotals(
            assigned=_prefixed(counters, "split:assigned:"),
            labelled=_prefixed(counters, "split:labelled:"),
            challenger_assigned=_prefixed(counters, "split:challenger_assigned:"),
            challenger_labelled=_prefixed(counters, "split:challenger_labelled:"),
        ),
    )


def _arm(counters: dict[str, float], arm: str) -> ArmStats:
    values: dict[str, float | int] = {}
    for name in _ARM_FIELDS:
        value = counters.get(f"{arm}:{name}", 0.0)
        values[name] = round(value) if ArmStats.model_fields[name].annotation is int else value
    bins = [0] * len(LATENCY_EDGES_MS)
    for i, count in _prefixed(counters, f"{arm}:latency_bin:").items():
        bins[int(i)] = count
    return ArmStats.model_validate({**values, "latency_bins": tuple(bins)})


def _prefixed(counters: dict[str, float], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: round(v) for k, v in counters.items() if k.startswith(prefix)}
