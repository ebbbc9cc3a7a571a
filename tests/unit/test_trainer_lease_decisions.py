"""The training lease's decisions, the schedule's periods and when pending triggers train."""

from __future__ import annotations

import pytest

from services.trainer.coalesce import CoalescePolicy, PendingArrival, newest, trigger_ids
from services.trainer.core import (
    heartbeat_interval,
    lease_after_renewal,
    period_due,
    schedule_period,
)
from shared.events import DataArrived, DatasetRef, RetrainModel

REF = DatasetRef(uri="file:///b.parquet", sha256="a" * 64, rows=10)


def _data(at: float) -> PendingArrival:
    return PendingArrival(DataArrived(producer="t", dataset=REF), at)


def _manual(at: float) -> PendingArrival:
    return PendingArrival(RetrainModel(producer="cli", model_name="m"), at, "manual")


def test_the_heartbeat_renews_three_times_per_ttl_unless_told() -> None:
    assert heartbeat_interval(60.0) == 20.0
    assert heartbeat_interval(60.0, 59.0) == 59.0


@pytest.mark.parametrize("heartbeat", [60.0, 90.0, 0.0])
def test_a_heartbeat_not_below_the_ttl_is_refused(heartbeat: float) -> None:
    with pytest.raises(ValueError, match="shorter than its TTL"):
        heartbeat_interval(60.0, heartbeat)


def test_a_renewal_that_finds_another_token_means_the_lease_is_lost() -> None:
    assert lease_after_renewal(False, since_confirmed_s=0.0, ttl_s=60.0) == "lost"
    assert lease_after_renewal(True, since_confirmed_s=10_000.0, ttl_s=60.0) == "held"


def test_an_unanswered_renewal_is_unsure_until_a_whole_ttl_went_by() -> None:
    assert lease_after_renewal(None, since_confirmed_s=59.9, ttl_s=60.0) == "unsure"
    assert lease_after_renewal(None, since_confirmed_s=60.0, ttl_s=60.0) == "lost"


def test_replicas_agree_on_the_period_whatever_their_start() -> None:
    every = 3600.0
    assert schedule_period(7200.0, every) == schedule_period(10_799.9, every) == 2
    assert schedule_period(10_800.0, every) == 3


def test_a_period_is_due_once_after_the_last_one_seen() -> None:
    every = 60.0
    last = schedule_period(1000.0, every)  # 16: the period the scheduler started in
    assert period_due(last, 1019.0, every) is None
    assert period_due(last, 1020.0, every) == 17
    assert period_due(17, 1079.0, every) is None
    assert period_due(17, 1300.0, every) == 21  # periods slept through are not made up


def test_a_request_trains_at_once_where_data_waits_for_its_window() -> None:
    policy = CoalescePolicy(window_s=10, max_wait_s=60, min_rows=1000)
    assert policy.decide([_data(100.0)], now=101.0) == "too_few_rows"
    assert policy.decide([_data(100.0), _manual(100.5)], now=101.0) == "train"
    tick = RetrainModel(producer="trainer", model_name="m", reason="schedule")
    assert policy.decide([PendingArrival(tick, 100.0, "schedule")], now=100.0) == "train"


def test_a_training_answers_the_newest_request_and_covers_the_data_beside_it() -> None:
    data, manual, later_data = _data(1.0), _manual(2.0), _data(3.0)
    cause = newest([data, manual, later_data])
    assert cause is manual
    ids = trigger_ids(cause.event, [data, manual, later_data])
    assert ids == (manual.event.event_id, data.event.event_id, later_data.event.event_id)
    assert newest([data, later_data]) is later_data


def test_the_newest_is_the_one_that_happened_last_whatever_partition_came_first() -> None:
    late, early = _data(0.0), _data(0.0)
    late = PendingArrival(
        late.event.model_copy(update={"occurred_at": early.event.occurred_at.replace(year=2100)}),
        1.0,
    )
    assert newest([late, early]) is late  # received first, happened last
