"""Sufficient statistics of an experiment, kept per allocation period (stratum).

A stratum is the challenger share in force when a unit was routed. Both arms of
one stratum were assigned over the same stretch of time, so comparing them is
fair even when accuracy drifts; comparing pooled arms across a ramp is not
(the challenger's outcomes come mostly from the late stages: Simpson's paradox).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Latency bins: upper edges in ms, log-spaced from 0.1 ms to ~100 s (p95 from counts).
LATENCY_EDGES_MS: tuple[float, ...] = tuple(0.1 * 10 ** (i / 10) for i in range(61))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ArmStats(_Frozen):
    """Sufficient statistics of one arm (in one stratum, or pooled over all of them).

    ``assigned`` counts units (an entity, or a request without one), each once per
    stratum; failed requests count there too. ``closed`` counts outcomes whose
    attribution window has closed: ``labelled`` of them had a label in time.
    Rewards are summed shifted by the experiment's ``reward_shift`` so that their
    variance keeps its precision at large offsets; a regressor's per-outcome losses
    (``loss_*``, the experiment's loss metric) likewise around its ``loss_shift``.
    """

    assigned: int = 0
    requests: int = 0
    errors: int = 0
    closed: int = 0
    labelled: int = 0
    correct: int = 0
    late: int = 0
    reward_n: int = 0
    reward_sum: float = 0.0
    reward_sumsq: float = 0.0
    loss_n: int = 0
    loss_sum: float = 0.0
    loss_sumsq: float = 0.0
    loss_overflow: int = 0
    latency_n: int = 0
    log_latency_sum: float = 0.0
    log_latency_sumsq: float = 0.0
    latency_bins: tuple[int, ...] = ()

    @property
    def accuracy(self) -> float:
        """Share of labelled outcomes that were correct."""
        return self.correct / self.labelled if self.labelled else 0.0

    @property
    def outcomes(self) -> int:
        """Labelled outcomes, rewards and losses: what the primary metric is estimated from."""
        return self.labelled + self.reward_n + self.loss_n

    def __add__(self, other: ArmStats) -> ArmStats:
        """Field-wise sum (latency bins element-wise)."""
        summed: dict[str, Any] = {
            name: getattr(self, name) + getattr(other, name)
            for name in ArmStats.model_fields
            if name != "latency_bins"
        }
        size = max(len(self.latency_bins), len(other.latency_bins))
        mine = self.latency_bins + (0,) * (size - len(self.latency_bins))
        theirs = other.latency_bins + (0,) * (size - len(other.latency_bins))
        summed["latency_bins"] = tuple(a + b for a, b in zip(mine, theirs, strict=True))
        return ArmStats.model_construct(**summed)  # sums of valid fields are valid


class StratumStats(_Frozen):
    """Both arms within one allocation period."""

    champion: ArmStats = ArmStats()
    challenger: ArmStats = ArmStats()


class ExperimentStats(_Frozen):
    """Every stratum of the experiment, keyed by its challenger share (as text)."""

    strata: dict[str, StratumStats] = Field(default_factory=dict)
    reward_shift: float = Field(0.0, description="Subtracted from every reward before summing.")
    loss_shift: float = Field(0.0, description="Subtracted from every loss before summing.")
    open_outcomes: int = Field(0, description="Predictions whose outcome window is still open.")

    @cached_property
    def champion(self) -> ArmStats:
        """The champion pooled over strata (for counts and display, never for comparisons)."""
        return _pooled(s.champion for s in self.strata.values())

    @cached_property
    def challenger(self) -> ArmStats:
        """The challenger pooled over strata (for counts and display, never for comparisons)."""
        return _pooled(s.challenger for s in self.strata.values())

    @classmethod
    def single(cls, champion: ArmStats, challenger: ArmStats, share: float) -> ExperimentStats:
        """Statistics of one stratum only (tests and simulations start here).

        >>> s = ExperimentStats.single(ArmStats(assigned=9), ArmStats(assigned=1), 0.1)
        >>> s.challenger.assigned, list(s.strata)
        (1, ['0.1'])
        """
        return cls(
            strata={share_key(share): StratumStats(champion=champion, challenger=challenger)}
        )


def share_key(share: float) -> str:
    """The stratum key of a challenger share.

    >>> share_key(0.05), share_key(0.5)
    ('0.05', '0.5')
    """
    return f"{share:.6g}"


def _pooled(arms: Iterable[ArmStats]) -> ArmStats:
    total = ArmStats()
    for arm in arms:
        total = total + arm
    return total
