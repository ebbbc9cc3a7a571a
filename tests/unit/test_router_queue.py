"""A newer challenger while an experiment runs: supersede only before the first look, else queue."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from services.router.core import Experiment, decide_on_approval, experiment_id_for
from services.router.core.decision import ExperimentStats
from services.router.core.experiment import ExperimentPlan, open_queued
from services.router.handlers import OutcomeHandler
from services.router.metrics import RouterMetrics
from shared.events import ExperimentUpdated, ModelApproved, ModelMetrics, ModelPromoted
from shared.testing import RecordingPublisher

MODEL = "customer-segment"
PLAN = ExperimentPlan(shares=(0.1, 0.5))
METRICS = ModelMetrics(accuracy=0.8, macro_f1=0.75, validation_rows=100)
OPENED = datetime(2026, 1, 1, tzinfo=UTC)


def challenger(version: str, champion: str = "1") -> ModelApproved:
    return ModelApproved(
        producer="registry",
        model_name=MODEL,
        version=version,
        run_id=f"run-{version}",
        alias="challenger",
        champion_version=champion,
        metrics=METRICS,
    )


def running(looks: int, challenger_version: str = "2") -> Experiment:
    return Experiment(
        experiment_id="exp-2",
        model_name=MODEL,
        status="running",
        champion_version="1",
        challenger_version=challenger_version,
        challenger_share=0.5,
        ramp_step=1,
        opened_at=OPENED,
        plan=PLAN,
        looks=looks,
    )


def test_a_challenger_nobody_has_looked_at_yet_is_superseded_with_the_reason() -> None:
    old, new = decide_on_approval(running(looks=0), challenger("3"), PLAN)
    assert (old.status, old.challenger_share) == ("superseded", 0.0)
    assert old.reasons == ("superseded", "no_look_yet", "by_version:3")
    assert (new.status, new.challenger_version) == ("running", "3")


def test_a_newer_challenger_waits_for_a_looked_at_experiment_to_conclude() -> None:
    current = running(looks=3)
    approval = challenger("3")
    (state,) = decide_on_approval(current, approval, PLAN)
    # The running experiment goes on exactly as it was: same id, version, share, stage.
    assert state.experiment_id == current.experiment_id
    assert (state.status, state.challenger_version) == ("running", "2")
    assert (state.challenger_share, state.ramp_step, state.looks) == (0.5, 1, 3)
    assert state.queued == approval
    assert state.reasons == ("challenger_queued", "queued_version:3")


def test_the_queue_keeps_only_the_newest_challenger() -> None:
    (queued,) = decide_on_approval(running(looks=3), challenger("3"), PLAN)
    (newer,) = decide_on_approval(queued, challenger("4"), PLAN)
    assert newer.queued is not None
    assert newer.queued.version == "4"
    assert decide_on_approval(newer, challenger("3"), PLAN) == ()  # a late redelivery
    assert decide_on_approval(newer, challenger("4"), PLAN) == ()


def test_after_a_promotion_the_queued_challenger_faces_the_new_champion() -> None:
    approval = challenger("3", champion="1")
    (queued,) = decide_on_approval(running(looks=3), approval, PLAN)
    concluded_at = datetime(2026, 1, 3, tzinfo=UTC)
    promoted = queued.model_copy(
        update={"status": "promoted", "challenger_share": 0.0, "concluded_at": concluded_at}
    )
    opened = open_queued(promoted)
    assert opened is not None
    assert opened.experiment_id == experiment_id_for(approval)
    assert (opened.status, opened.champion_version, opened.challenger_version) == (
        "running",
        "2",
        "3",
    )
    assert opened.challenger_share == PLAN.shares[0]
    assert opened.opened_at == concluded_at
    assert opened.correlation_id == approval.correlation_id
    assert opened.queued is None


def test_after_a_rollback_the_queued_challenger_faces_the_old_champion() -> None:
    (queued,) = decide_on_approval(running(looks=3), challenger("3"), PLAN)
    rolled_back = queued.model_copy(update={"status": "rolled_back", "challenger_share": 0.0})
    opened = open_queued(rolled_back)
    assert opened is not None
    assert (opened.champion_version, opened.challenger_version) == ("1", "3")


def test_nothing_opens_while_running_or_without_a_queue() -> None:
    (queued,) = decide_on_approval(running(looks=3), challenger("3"), PLAN)
    assert open_queued(queued) is None
    assert open_queued(running(looks=3).model_copy(update={"status": "promoted"})) is None


class _Store:
    def __init__(self, *experiments: Experiment) -> None:
        self.by_id = {e.experiment_id: e for e in experiments}
        self.current_of = {e.model_name: e for e in experiments}

    async def current(self, model_name: str) -> Experiment | None:
        return self.current_of.get(model_name)

    async def get(self, model_name: str, experiment_id: str) -> Experiment | None:
        found = self.by_id.get(experiment_id)
        return found if found is not None and found.model_name == model_name else None

    async def save(self, experiment: Experiment, update: ExperimentUpdated | None) -> None:
        self.by_id[experiment.experiment_id] = experiment
        self.current_of[experiment.model_name] = experiment


class _Tally:
    async def stats(self, model_name: str, experiment_id: str) -> ExperimentStats:
        raise AssertionError("a pending verdict is carried out without looking again")


class _Aliases:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def promote(self, model_name: str, version: str, previous: str) -> None:
        self.calls.append(("promote", version))

    def drop_challenger(self, model_name: str, version: str) -> None:
        self.calls.append(("drop_challenger", version))


async def test_the_verdict_opens_the_queued_challenger_in_its_own_turn() -> None:
    approval = challenger("3")
    (queued,) = decide_on_approval(running(looks=3), approval, PLAN)
    verdict = queued.model_copy(
        update={
            "status": "promoted",
            "decision": "promote",
            "challenger_share": 0.0,
            "concluded_at": datetime(2026, 1, 3, tzinfo=UTC),
            "actions_pending": True,
        }
    )
    store, publisher = _Store(verdict), RecordingPublisher()
    handler = OutcomeHandler(
        store,  # type: ignore[arg-type]
        _Tally(),  # type: ignore[arg-type]
        _Aliases(),
        publisher,
        RouterMetrics.create(CollectorRegistry()),
    )
    await handler.look_at(verdict.model_name, verdict.experiment_id)

    kinds = [(type(e).__name__, getattr(e, "status", None)) for e in publisher.events]
    assert kinds == [
        ("ExperimentUpdated", "promoted"),
        ("ModelPromoted", None),
        ("ExperimentUpdated", "running"),
    ]
    opened = publisher.events[-1]
    assert isinstance(opened, ExperimentUpdated)
    assert opened.experiment_id == experiment_id_for(approval)
    assert (opened.champion_version, opened.challenger_version) == ("2", "3")
    assert (opened.correlation_id, opened.causation_id) == (
        approval.correlation_id,
        approval.event_id,
    )
    current = await store.current(MODEL)
    assert current is not None
    assert current.experiment_id == opened.experiment_id
    assert isinstance(publisher.events[1], ModelPromoted)

    # Carried out again (a redelivered outcome): the queued challenger opens once.
    await handler.look_at(verdict.model_name, verdict.experiment_id)
    assert len(publisher.events) == 3
