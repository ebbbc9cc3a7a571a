"""Experiments are saved by compare-and-set, so router replicas never lose each other's writes.

Every saved experiment carries a ``revision``; the store refuses a save whose
revision is not the stored one (``StaleExperimentError``): another replica wrote
first. The writer then reads again and decides again on what that one left
(``decide_again_if_stale``). A verdict is carried out by the one process that
claimed it, by a compare-and-set save too (``claim_verdict``): two replicas that
both look at an experiment publish its verdict once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from services.router.core import Experiment
from services.router.ports import ExperimentStore
from shared.errors import DependencyUnavailableError

log = logging.getLogger(__name__)

#: How long a verdict's claim keeps other replicas off it: past that, its holder is taken
#: for dead and the next look carries the verdict out (its steps are safe to repeat).
VERDICT_CLAIM_S = 60.0


class StaleExperimentError(DependencyUnavailableError):
    """A save carried an older revision than the stored experiment's: another writer won.

    Retryable: read again and decide again (an event that gives up is redelivered).
    """

    def __init__(self, model_name: str, experiment_id: str, revision: int, stored: int) -> None:
        super().__init__(
            f"experiment {experiment_id} of {model_name} changed meanwhile: saved at revision "
            f"{revision}, stored {stored}"
        )
        self.stored = stored


def saved_as(experiment: Experiment) -> Experiment:
    """``experiment`` as a successful save stored it: one revision later.

    >>> from datetime import UTC, datetime
    >>> e = Experiment(experiment_id="e", model_name="m", status="running",
    ...                champion_version="1", opened_at=datetime(2026, 1, 1, tzinfo=UTC))
    >>> saved_as(e).revision
    1
    """
    return experiment.model_copy(update={"revision": experiment.revision + 1})


async def decide_again_if_stale(
    decide: Callable[[], Awaitable[None]], what: str, attempts: int = 3
) -> None:
    """Run ``decide`` (read, decide, save); again when its save met a newer revision.

    After ``attempts`` the StaleExperimentError leaves: a look is retried by the next
    tick, an event is redelivered.
    """
    for attempt in range(1, attempts + 1):
        try:
            await decide()
            return
        except StaleExperimentError as error:
            if attempt == attempts:
                raise
            log.info(
                "experiment changed meanwhile: deciding again",
                extra={"what": what, "error": str(error)},
            )


def verdict_claimable(state: Experiment, holder: str, now: datetime) -> bool:
    """Whether ``holder`` may carry out ``state``'s verdict: unclaimed, its own, or the
    claim is older than ``VERDICT_CLAIM_S`` (its holder died).

    >>> from datetime import UTC, datetime
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> e = Experiment(experiment_id="e", model_name="m", status="promoted",
    ...                champion_version="1", opened_at=t, actions_pending=True)
    >>> claimed = e.model_copy(update={"verdict_holder": "a", "verdict_claimed_at": t})
    >>> verdict_claimable(e, "b", t), verdict_claimable(claimed, "b", t)
    (True, False)
    >>> later = t + timedelta(minutes=2)
    >>> verdict_claimable(claimed, "a", t), verdict_claimable(claimed, "b", later)
    (True, True)
    """
    if state.verdict_holder in (None, holder) or state.verdict_claimed_at is None:
        return True
    return now - state.verdict_claimed_at > timedelta(seconds=VERDICT_CLAIM_S)


async def claim_verdict(
    store: ExperimentStore, state: Experiment, holder: str, now: datetime
) -> Experiment | None:
    """``state`` claimed for ``holder`` and saved (compare-and-set), or None when another
    process holds it. A StaleExperimentError means someone wrote first: read again."""
    if not verdict_claimable(state, holder, now):
        log.info(
            "another router carries out this verdict",
            extra={"model": state.model_name, "experiment_id": state.experiment_id},
        )
        return None
    claimed = state.model_copy(update={"verdict_holder": holder, "verdict_claimed_at": now})
    await store.save(claimed, None)
    return saved_as(claimed)


async def release_verdict(store: ExperimentStore, claimed: Experiment) -> None:
    """Give up the claim on ``claimed``'s verdict (carrying it out failed): the next look
    of any process finishes it. Best effort: an unreleased claim lapses after
    ``VERDICT_CLAIM_S``."""
    released = claimed.model_copy(update={"verdict_holder": None, "verdict_claimed_at": None})
    with contextlib.suppress(DependencyUnavailableError):  # a stale one included
        await store.save(released, None)
