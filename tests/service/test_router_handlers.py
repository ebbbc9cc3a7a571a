"""Router handlers through FastStream's in-memory broker, with in-memory stores and aliases."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from faststream.kafka import KafkaBroker, TestKafkaBroker
from prometheus_client import CollectorRegistry

from services.router.core import Experiment, experiment_id_for
from services.router.core.decision import DecisionConfig, ExperimentStats
from services.router.core.experiment import ExperimentPlan
from services.router.core.outcomes import (
    Closing,
    Label,
    LabelStatus,
    OutcomeWindow,
    PendingOutcome,
    closes_by,
)
from services.router.core.report import LookPoint
from services.router.core.tally import stats_from_counters
from services.router.handlers import ApprovalHandler, OutcomeHandler, register
from services.router.metrics import RouterMetrics
from services.router.routes import experiments_router
from shared.events import (
    Event,
    ExperimentUpdated,
    FeedbackReceived,
    ModelApproved,
    ModelMetrics,
    ModelPromoted,
    ModelRolledBack,
    PredictionFailed,
    PredictionLogged,
    Role,
    Topic,
    Variant,
)
from shared.http_errors import install_error_handlers
from shared.testing import RecordingPublisher, consumer_context

MODEL = "customer-segment"
#: Outcomes close 20 predictions after their own (labels here come at once), or after an hour.
PLAN = ExperimentPlan(
    shares=(0.1, 0.5),
    stage_min_labelled=20,
    look_every=20,
    decision=DecisionConfig(min_labelled_per_arm=100),
    outcome_window=OutcomeWindow(seconds=3600, predictions=20),
)


class InMemoryExperimentStore:
    """Experiments per model and per id, and each model's routing table, in dicts."""

    def __init__(self) -> None:
        self.experiments: dict[str, Experiment] = {}
        self.by_id: dict[tuple[str, str], Experiment] = {}
        self.tables: dict[str, ExperimentUpdated] = {}

    async def current(self, model_name: str) -> Experiment | None:
        return self.experiments.get(model_name)

    async def get(self, model_name: str, experiment_id: str) -> Experiment | None:
        return self.by_id.get((model_name, experiment_id))

    async def find(self, experiment_id: str) -> Experiment | None:
        found = [e for (_, i), e in self.by_id.items() if i == experiment_id]
        return found[0] if found else None

    async def all(self, model_name: str | None = None) -> list[Experiment]:
        kept = [e for e in self.by_id.values() if model_name in (None, e.model_name)]
        return sorted(kept, key=lambda e: e.opened_at, reverse=True)

    async def save(self, experiment: Experiment, update: ExperimentUpdated | None) -> None:
        self.experiments[experiment.model_name] = experiment
        self.by_id[(experiment.model_name, experiment.experiment_id)] = experiment
        if update is not None:
            self.tables[experiment.model_name] = update

    async def routing_table(self, model_name: str) -> ExperimentUpdated | None:
        return self.tables.get(model_name)


#: An experiment's keys in the fake tally: its model and its id, as the Redis keys carry both.
Exp = tuple[str, str]


class InMemoryTally:
    """Counters per experiment with once-only markers and outcome windows, like the scripts."""

    def __init__(self) -> None:
        self.counters: dict[Exp, dict[str, float]] = {}
        self.counted: set[tuple[str, str]] = set()
        self.looks: dict[Exp, list[LookPoint]] = {}
        self.seq: dict[Exp, int] = {}
        self.pending: dict[Exp, dict[str, PendingOutcome]] = {}
        self.labels: dict[Exp, dict[str, Label]] = {}
        self.closed: set[tuple[Exp, str]] = set()

    async def open_outcome(
        self, model_name: str, experiment_id: str, pending: PendingOutcome
    ) -> bool:
        exp = (model_name, experiment_id)
        opened = self.pending.setdefault(exp, {})
        if (exp, pending.request_id) in self.closed or pending.request_id in opened:
            return False
        self.seq[exp] = self.seq.get(exp, 0) + 1
        opened[pending.request_id] = pending.model_copy(update={"seq": self.seq[exp]})
        return True

    async def label(
        self, model_name: str, experiment_id: str, request_id: str, label: Label
    ) -> LabelStatus:
        exp = (model_name, experiment_id)
        labels = self.labels.setdefault(exp, {})
        if (exp, request_id) in self.closed:
            return "late"
        if request_id in labels:
            return "duplicate"
        labels[request_id] = label.model_copy(update={"seq": self.seq.get(exp, 0)})
        return "open"

    async def due(
        self, model_name: str, experiment_id: str, window: OutcomeWindow, now: float
    ) -> Closing:
        exp = (model_name, experiment_id)
        seq_now, labels = self.seq.get(exp, 0), self.labels.get(exp, {})
        closing = [
            (p, labels.get(rid))
            for rid, p in self.pending.get(exp, {}).items()
            if closes_by(p, now, seq_now, window)
        ]
        counters = self.counters.get(exp, {})
        return Closing(closing, counters.get("reward_shift"), counters.get("loss_shift"))

    async def close(
        self,
        model_name: str,
        experiment_id: str,
        increments: dict[str, dict[str, float]],
        reward_shift: float | None,
        loss_shift: float | None = None,
    ) -> int:
        exp = (model_name, experiment_id)
        counters = self.counters.setdefault(exp, {})
        for field, shift in (("reward_shift", reward_shift), ("loss_shift", loss_shift)):
            if shift is not None:
                counters.setdefault(field, shift)
        pending, closed = self.pending.get(exp, {}), 0
        for request_id, counts in increments.items():
            if pending.pop(request_id, None) is None:
                continue
            self.labels.get(exp, {}).pop(request_id, None)
            self.closed.add((exp, request_id))
            for key, amount in counts.items():
                counters[key] = counters.get(key, 0.0) + amount
            closed += 1
        return closed

    async def add(
        self, model_name: str, experiment_id: str, event_id: str, increments: dict[str, float]
    ) -> bool:
        if (model_name, event_id) in self.counted:
            return False
        self.counted.add((model_name, event_id))
        counters = self.counters.setdefault((model_name, experiment_id), {})
        for key, amount in increments.items():
            counters[key] = counters.get(key, 0.0) + amount
        return True

    async def stats(self, model_name: str, experiment_id: str) -> ExperimentStats:
        exp = (model_name, experiment_id)
        return stats_from_counters(self.counters.get(exp, {}), len(self.pending.get(exp, {})))

    async def append_look(self, model_name: str, experiment_id: str, point: LookPoint) -> None:
        self.looks.setdefault((model_name, experiment_id), []).append(point)

    async def history(self, model_name: str, experiment_id: str) -> list[LookPoint]:
        return list(self.looks.get((model_name, experiment_id), []))


class FakeAliases:
    """Alias moves recorded; can fail like an MLflow outage."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.failing = False

    def promote(self, model_name: str, version: str, previous: str) -> None:
        if self.failing:
            raise ConnectionError("mlflow is down")
        self.calls.append(("promote", version, previous))

    def drop_challenger(self, model_name: str, version: str) -> None:
        if self.failing:
            raise ConnectionError("mlflow is down")
        self.calls.append(("drop_challenger", version))


class Router:
    """The router's handlers wired to fakes."""

    def __init__(self, store: InMemoryExperimentStore | None = None) -> None:
        self.broker = KafkaBroker()
        self.store = store or InMemoryExperimentStore()
        self.tally = InMemoryTally()
        self.aliases = FakeAliases()
        self.publisher = RecordingPublisher()
        self.registry = CollectorRegistry()
        self.metrics = RouterMetrics.create(self.registry)
        self.now = datetime.now(UTC)
        self.approvals = ApprovalHandler(self.store, self.publisher, self.metrics, PLAN)
        self.outcomes = OutcomeHandler(
            self.store, self.tally, self.aliases, self.publisher, self.metrics, lambda: self.now
        )
        register(consumer_context("router", self.broker), self.approvals, self.outcomes)

    async def deliver(self, *events: Event) -> None:
        async with TestKafkaBroker(self.broker) as test_broker:
            for event in events:
                await test_broker.publish(event.model_dump_json().encode(), event.topic)

    def updates(self) -> list[ExperimentUpdated]:
        return [e for e in self.publisher.events if isinstance(e, ExperimentUpdated)]


def approval(alias: Role, version: str, champion: str = "1") -> ModelApproved:
    return ModelApproved(
        producer="registry",
        model_name=MODEL,
        version=version,
        run_id=f"run-{version}",
        alias=alias,
        champion_version=champion,
        metrics=ModelMetrics(accuracy=0.8, macro_f1=0.7, validation_rows=50),
    )


def outcome_pair(
    experiment_id: str, variant: Variant, share: float, correct: bool
) -> tuple[PredictionLogged, FeedbackReceived]:
    version = "2" if variant == "challenger" else "1"
    common = {"model_name": MODEL, "version": version, "variant": variant}
    routed = {"experiment_id": experiment_id, "challenger_share": share}
    prediction = PredictionLogged(
        producer="gateway",
        request_id=f"r-{random.random()}",
        features={},
        predicted_class="steady",
        confidence=0.9,
        latency_ms=3.0,
        **common,
        **routed,
    )
    feedback = FeedbackReceived(
        producer="gateway",
        request_id=prediction.request_id,
        predicted_class="steady",
        true_label="steady" if correct else "churn_risk",
        correct=correct,
        **common,
        **routed,
    )
    return prediction, feedback


def failure(experiment_id: str, share: float) -> PredictionFailed:
    return PredictionFailed(
        producer="gateway",
        request_id=f"r-{random.random()}",
        model_name=MODEL,
        version="2",
        variant="challenger",
        error_type="ValueError",
        latency_ms=1.0,
        experiment_id=experiment_id,
        challenger_share=share,
    )


async def drive(
    router: Router,
    experiment_id: str,
    acc_a: float,
    acc_b: float,
    max_events: int = 6000,
    challenger_failures: float = 0.0,
) -> Experiment:
    """Send routed predictions and their outcomes by the current split until a verdict.

    A share ``challenger_failures`` of the challenger's requests fail instead.
    """
    rng = random.Random(3)
    for _ in range(max_events // 20):
        state = await router.store.get(MODEL, experiment_id)
        assert state is not None
        if not state.is_running or state.decision == "hold":
            return state
        for _ in range(20):
            variant: Variant = "challenger" if rng.random() < state.challenger_share else "champion"
            accuracy = acc_b if variant == "challenger" else acc_a
            if variant == "challenger" and rng.random() < challenger_failures:
                await router.outcomes.on_failure(failure(experiment_id, state.challenger_share))
                continue
            prediction, feedback = outcome_pair(
                experiment_id, variant, state.challenger_share, rng.random() < accuracy
            )
            await router.outcomes.on_prediction(prediction)
            await router.outcomes.on_feedback(feedback)
    final = await router.store.get(MODEL, experiment_id)
    assert final is not None
    return final


async def close_all(router: Router, experiment_id: str) -> None:
    """Let every outcome window end (two hours later) and look."""
    router.now += timedelta(hours=2)
    await router.outcomes.look_at(MODEL, experiment_id)


async def open_experiment(router: Router) -> str:
    """Approve challenger 2 against champion 1; the id of the experiment it opens."""
    cause = approval("challenger", "2")
    await router.approvals(cause)
    return experiment_id_for(cause)


@pytest.fixture
def router() -> Router:
    return Router()


async def test_approved_champion_serves_alone(router: Router) -> None:
    await router.deliver(approval("champion", "1"))
    (update,) = router.updates()
    assert update.status == "champion_only"
    assert (update.champion_version, update.challenger_version) == ("1", None)
    assert update.challenger_share == 0.0
    assert router.store.tables.get(MODEL) == update
    assert router.store.experiments[MODEL].status == "champion_only"


async def test_approved_challenger_opens_an_experiment_in_the_same_turn(router: Router) -> None:
    cause = approval("challenger", "2", champion="1")
    await router.deliver(approval("champion", "1"), cause)
    update = router.updates()[-1]
    assert update.status == "running"
    assert (update.champion_version, update.challenger_version) == ("1", "2")
    assert update.challenger_share == pytest.approx(0.1)
    assert update.stage == 0
    assert update.producer == "router"
    assert update.correlation_id == cause.correlation_id
    assert update.causation_id == cause.event_id
    assert router.store.tables.get(MODEL) == update
    opened = router.registry.get_sample_value("experiments_opened_total", {"model_name": MODEL})
    assert opened == 1


async def test_newer_challenger_publishes_superseded_then_running(router: Router) -> None:
    await router.deliver(approval("challenger", "2"), approval("challenger", "3"))
    statuses = [(u.status, u.challenger_version) for u in router.updates()]
    assert statuses == [("running", "2"), ("superseded", "2"), ("running", "3")]
    first, superseded, _ = router.updates()
    assert superseded.experiment_id == first.experiment_id
    assert router.store.tables[MODEL].challenger_version == "3"


async def test_redelivered_approval_is_handled_once(router: Router) -> None:
    event = approval("challenger", "2")
    await router.deliver(event, event)
    assert len(router.updates()) == 1


async def test_a_better_challenger_ramps_then_is_promoted(router: Router) -> None:
    cause = approval("challenger", "2")
    await router.approvals(cause)
    experiment_id = experiment_id_for(cause)
    final = await drive(router, experiment_id, acc_a=0.70, acc_b=0.90)
    assert final.status == "promoted"
    assert not final.actions_pending
    steps = [(u.status, u.challenger_share) for u in router.updates()]
    assert steps == [("running", 0.1), ("running", 0.5), ("promoted", 0.0)]
    assert router.aliases.calls == [("promote", "2", "1")]
    (promoted,) = router.publisher.of_type(ModelPromoted)
    assert isinstance(promoted, ModelPromoted)
    last_update = router.updates()[-1]
    assert (last_update.champion_version, last_update.challenger_version) == ("2", None)
    assert last_update.decision == "promote"
    # One turn of the loop: approval → updates → promotion, each caused by the one before.
    assert {u.correlation_id for u in router.updates()} == {cause.correlation_id}
    assert promoted.correlation_id == cause.correlation_id
    assert promoted.causation_id == last_update.event_id
    assert router.updates()[1].causation_id == router.updates()[0].event_id
    assert router.store.tables.get(MODEL) == last_update


async def test_a_worse_challenger_is_rolled_back(router: Router) -> None:
    cause = approval("challenger", "2")
    await router.approvals(cause)
    final = await drive(router, experiment_id_for(cause), acc_a=0.90, acc_b=0.60)
    assert (final.status, final.decision) == ("rolled_back", "rollback")
    assert router.aliases.calls == [("drop_challenger", "2")]
    (rolled_back,) = router.publisher.of_type(ModelRolledBack)
    assert isinstance(rolled_back, ModelRolledBack)
    assert (rolled_back.version, rolled_back.rolled_back_version) == ("1", "2")
    assert "primary_worse" in rolled_back.reason
    assert router.store.tables[MODEL].status == "rolled_back"


async def test_redelivered_feedback_is_counted_once(router: Router) -> None:
    cause = approval("challenger", "2")
    await router.approvals(cause)
    experiment_id = experiment_id_for(cause)
    prediction, feedback = outcome_pair(experiment_id, "challenger", 0.1, True)
    await router.outcomes.on_prediction(prediction)
    await router.outcomes.on_feedback(feedback)
    await router.outcomes.on_feedback(feedback)
    await close_all(router, experiment_id)
    stats = await router.tally.stats(MODEL, experiment_id)
    assert (stats.challenger.closed, stats.challenger.labelled) == (1, 1)


async def test_feedback_outside_any_experiment_is_not_counted(router: Router) -> None:
    _, feedback = outcome_pair("exp-x", "champion", 0.0, True)
    await router.outcomes.on_feedback(feedback)
    assert router.tally.counters == {}


async def test_a_verdict_interrupted_by_an_outage_is_finished_after_a_restart() -> None:
    first = Router()
    cause = approval("challenger", "2")
    await first.approvals(cause)
    experiment_id = experiment_id_for(cause)
    first.aliases.failing = True
    # The feedback that brought the verdict is handled all the same (its label is kept):
    # the failed look is counted, and the tick (or the next outcome) tries again.
    await drive(first, experiment_id, acc_a=0.70, acc_b=0.90)
    failures = first.registry.get_sample_value(
        "experiment_look_failures_total", {"model_name": MODEL}
    )
    assert failures is not None
    assert failures >= 1
    pending = await first.store.get(MODEL, experiment_id)
    assert pending is not None
    assert (pending.status, pending.actions_pending) == ("promoted", True)
    assert first.publisher.of_type(ModelPromoted) == []
    # A new router process on the same store: the next outcome finishes the verdict once.
    second = Router(store=first.store)
    second.tally = first.tally
    second.outcomes = OutcomeHandler(
        second.store, second.tally, second.aliases, second.publisher, second.metrics
    )
    _, late = outcome_pair(experiment_id, "champion", 0.5, True)
    await second.outcomes.on_feedback(late)
    await second.outcomes.on_feedback(outcome_pair(experiment_id, "champion", 0.5, True)[1])
    assert second.aliases.calls == [("promote", "2", "1")]
    assert len(second.publisher.of_type(ModelPromoted)) == 1
    done = await second.store.get(MODEL, experiment_id)
    assert done is not None
    assert not done.actions_pending


async def test_feedback_through_the_broker_reaches_the_tally(router: Router) -> None:
    cause = approval("challenger", "2")
    await router.approvals(cause)
    prediction, feedback = outcome_pair(experiment_id_for(cause), "challenger", 0.1, True)
    async with TestKafkaBroker(router.broker) as broker:
        await broker.publish(prediction.model_dump_json().encode(), Topic.PREDICTION_LOGGED)
        await broker.publish(feedback.model_dump_json().encode(), Topic.FEEDBACK_RECEIVED)
    stats = await router.tally.stats(MODEL, experiment_id_for(cause))
    assert (stats.challenger.assigned, stats.challenger.labelled, stats.open_outcomes) == (1, 0, 1)
    await close_all(router, experiment_id_for(cause))
    stats = await router.tally.stats(MODEL, experiment_id_for(cause))
    assert (stats.challenger.labelled, stats.open_outcomes) == (1, 0)


async def test_routes_list_experiments_and_report_them(router: Router) -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(experiments_router(router.store, router.tally, MODEL))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        assert (await client.get("/v1/experiments/current")).status_code == 404
        assert (await client.get("/v1/experiments/nope/report")).status_code == 404
        cause = approval("challenger", "2")
        await router.approvals(cause)
        await drive(router, experiment_id_for(cause), acc_a=0.70, acc_b=0.90)
        listed = (await client.get("/v1/experiments")).json()
        report = (await client.get(f"/v1/experiments/{experiment_id_for(cause)}/report")).json()
        current = (await client.get("/v1/experiments/current")).json()
    assert [e["experiment_id"] for e in listed] == [experiment_id_for(cause)]
    assert current["status"] == "promoted"
    assert report["decision"] == "promote"
    assert report["primary"]["always_valid_ci"][0] > 0
    assert report["primary"]["fixed_horizon_note"].startswith("not valid")
    assert report["srm"]["mismatch"] is False
    assert {g["name"] for g in report["guardrails"]} == {"log_latency", "label_rate"}
    assert report["arms"]["challenger"]["labelled"] >= 100
    assert report["outcome_window"] == {"seconds": 3600.0, "predictions": 20, "grace_seconds": 10.0}
    assert report["open_outcomes"] > 0  # the last 20 predictions' windows
    assert len(report["history"]) >= 2


async def test_a_more_accurate_challenger_that_fails_requests_is_rolled_back(
    router: Router,
) -> None:
    experiment_id = await open_experiment(router)
    final = await drive(router, experiment_id, acc_a=0.75, acc_b=0.80, challenger_failures=0.1)
    assert (final.status, final.decision) == ("rolled_back", "rollback")
    assert "guardrail_harmed:error_rate" in final.reasons
    (rolled_back,) = router.publisher.of_type(ModelRolledBack)
    assert isinstance(rolled_back, ModelRolledBack)
    assert "guardrail_harmed:error_rate" in rolled_back.reason


async def test_failed_predictions_from_kafka_count_as_errors_of_their_variant(
    router: Router,
) -> None:
    experiment_id = await open_experiment(router)
    failed = failure(experiment_id, 0.1)
    await router.deliver(failed, failed, failure(experiment_id, 0.1))
    stats = await router.tally.stats(MODEL, experiment_id)
    assert (stats.challenger.errors, stats.champion.errors) == (2, 0)
    assert stats.strata["0.1"].challenger.assigned == 2


async def test_shadow_answers_count_in_no_experiment(router: Router) -> None:
    experiment_id = await open_experiment(router)
    prediction, _ = outcome_pair(experiment_id, "challenger", 0.1, correct=True)
    await router.outcomes.on_prediction(prediction.model_copy(update={"shadow": True}))
    assert (await router.tally.stats(MODEL, experiment_id)).challenger.assigned == 0
    await router.outcomes.on_prediction(prediction)
    assert (await router.tally.stats(MODEL, experiment_id)).challenger.assigned == 1


async def test_a_label_after_its_window_is_counted_late_and_never_decides(
    router: Router,
) -> None:
    experiment_id = await open_experiment(router)
    prediction, feedback = outcome_pair(experiment_id, "challenger", 0.1, True)
    await router.outcomes.on_prediction(prediction)
    await close_all(router, experiment_id)  # the window ends without a label
    await router.outcomes.on_feedback(feedback)
    stats = await router.tally.stats(MODEL, experiment_id)
    assert (stats.challenger.closed, stats.challenger.labelled, stats.challenger.late) == (1, 0, 1)
    late = router.registry.get_sample_value(
        "experiment_outcomes_total", {"model_name": MODEL, "counted": "late"}
    )
    assert late == 1


async def test_a_batch_request_is_one_assigned_unit(router: Router) -> None:
    experiment_id = await open_experiment(router)
    row, _ = outcome_pair(experiment_id, "challenger", 0.1, True)
    batch = [
        row.model_copy(update={"request_id": f"{row.request_id}-{i}", "event_id": f"e-{i}"})
        for i in range(1000)
    ]
    for event in batch:
        await router.outcomes.on_prediction(event)
    stats = await router.tally.stats(MODEL, experiment_id)
    assert (stats.challenger.assigned, stats.challenger.requests) == (1, 1)
    assert stats.open_outcomes == 1000  # every row still has its outcome


async def test_an_entity_is_one_unit_across_its_requests(router: Router) -> None:
    experiment_id = await open_experiment(router)
    for _ in range(3):
        row, _ = outcome_pair(experiment_id, "champion", 0.1, True)
        await router.outcomes.on_prediction(row.model_copy(update={"entity_id": "customer-7"}))
    stats = await router.tally.stats(MODEL, experiment_id)
    assert (stats.champion.assigned, stats.champion.requests) == (1, 3)


async def test_a_challenger_failing_every_request_is_rolled_back(router: Router) -> None:
    experiment_id = await open_experiment(router)
    final = await drive(router, experiment_id, acc_a=0.8, acc_b=0.8, challenger_failures=1.0)
    assert (final.status, final.decision) == ("rolled_back", "rollback")
    assert final.reasons == ("guardrail_harmed:error_rate",)


async def test_a_hold_is_published_with_its_cause(router: Router) -> None:
    experiment_id = await open_experiment(router)
    # Only champion units arrive while 10 % should go to the challenger: a broken split.
    for _ in range(400):
        prediction, feedback = outcome_pair(experiment_id, "champion", 0.1, True)
        await router.outcomes.on_prediction(prediction)
        await router.outcomes.on_feedback(feedback)
    held = router.updates()[-1]
    assert (held.status, held.decision) == ("running", "hold")
    assert held.hold_cause == "sample_ratio_mismatch_assigned"


async def test_the_periodic_tick_closes_windows_and_ends_an_experiment_past_its_duration(
    router: Router,
) -> None:
    experiment_id = await open_experiment(router)
    for _ in range(5):
        prediction, feedback = outcome_pair(experiment_id, "champion", 0.1, True)
        await router.outcomes.on_prediction(prediction)
        await router.outcomes.on_feedback(feedback)
    assert (await router.tally.stats(MODEL, experiment_id)).open_outcomes == 5
    router.now += timedelta(hours=2)
    await router.outcomes.tick()
    stats = await router.tally.stats(MODEL, experiment_id)
    assert (stats.open_outcomes, stats.champion.labelled) == (0, 5)
    # No traffic at all after that: the tick alone ends it at its maximum duration.
    router.now += timedelta(seconds=PLAN.max_duration_s)
    await router.outcomes.tick()
    ended = await router.store.get(MODEL, experiment_id)
    assert ended is not None
    assert (ended.status, ended.challenger_share, ended.reasons[0]) == (
        "inconclusive",
        0.0,
        "max_duration",
    )
    assert router.aliases.calls == [("drop_challenger", "2")]
    assert router.updates()[-1].status == "inconclusive"
