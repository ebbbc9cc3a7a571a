"""Three models' loops at once through a real Kafka, Redis and MLflow, the services as processes.

One stack serves three models with different specs: customer-segment as the
deployment's default model (``FLYWHEEL_MODEL_NAME``, the deprecated single-model
setting, also on the old routes), card-fraud and customer-value (a regressor:
values, true values as feedback, experiments on squared error) registered
through the registry. Each trains, is approved, serves on its own route,
drifts, retrains and reaches its experiment's verdict on its own, while a
malformed batch announced for one of them goes to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from flywheel.demo import DemoConfig, LoopRun, register_models, run_demos
from flywheel.demo_models import DemoModel, customer_value_model, demo_models
from flywheel.infra import Endpoints
from flywheel.infra.admin_token import read_admin_token
from flywheel.infra.stack import SERVICES, start_services, stop_services
from flywheel.loop import DeadLetter, EventTap, announce, publish_raw
from shared.datasets import generate_customers, write_batch
from shared.events import (
    FeedbackReceived,
    ModelMetrics,
    ModelPromoted,
    Topic,
    dead_letter_topic,
    topic_name,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

WINDOW = 300
ROUTER_ENV = {
    "ROUTER_RAMP_SHARES": "[0.05, 0.25, 0.5]",
    "ROUTER_STAGE_MIN_LABELLED": "30",
    "ROUTER_LOOK_EVERY": "25",
    "ROUTER_MIN_LABELLED_PER_ARM": "60",
    "ROUTER_MIN_CORRECT_PER_ARM": "10",
    "ROUTER_MIN_WRONG_PER_ARM": "10",
    "ROUTER_N_STAR": "600",
    # Labels come right after their predictions here: a 5 s outcome window holds them all.
    "ROUTER_OUTCOME_WINDOW_S": "5",
    "ROUTER_OUTCOME_GRACE_S": "2",
    "ROUTER_LOOK_INTERVAL_S": "1",
    # The three above are per-arm minima of a classifier's outcomes; a regressor's
    # experiment needs ROUTER_MIN_LABELLED_PER_ARM losses per arm (no correct/wrong).
    # The latency guardrail has its own unit tests; here a 2-core CI box's scheduling
    # noise must not decide whether the loop reaches its verdict.
    "ROUTER_LATENCY_SLOWDOWN": "2.0",
}
RUN = uuid.uuid4().hex[:8]
#: The default model (customer-segment's spec), then two registered ones.
MODELS: tuple[DemoModel, ...] = (
    demo_models()[0].named(f"segment-{RUN}"),
    demo_models()[1].named(f"fraud-{RUN}"),
    customer_value_model().named(f"value-{RUN}"),
)
DEFAULT, FRAUD, VALUE = MODELS
#: The features each model's generator shifts in the drift step.
SHIFTED = {
    DEFAULT.name: {"monthly_spend", "visits_per_month"},
    FRAUD.name: {"amount", "distance_km"},
    VALUE.name: {"monthly_spend", "visits_per_month"},
}


def _free_ports() -> dict[str, int]:
    ports = {}
    for name in SERVICES:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports[name] = int(sock.getsockname()[1])
    return ports


@pytest.fixture(scope="module")
def stack(infra: Endpoints) -> Iterator[dict[str, str]]:
    """The five services on free ports against the session's infrastructure."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLYWHEEL_MODEL_NAME", DEFAULT.name)
        patch.setenv("MONITOR_WINDOW_SIZE", str(WINDOW))
        patch.setenv("MONITOR_REFERENCE_REFRESH_S", "1")
        # Small samples so the experiment decides in a few hundred customers.
        for name, value in ROUTER_ENV.items():
            patch.setenv(name, value)
        try:
            # A Redis database of its own: other modules' stacks leave their routing tables.
            yield start_services(infra.with_redis_db(2), ports=_free_ports(), timeout=180)
        finally:
            stop_services(infra.run_dir)


@dataclass
class ManyLoops:
    """What the three loops produced, and the dead letter of the malformed batch."""

    runs: dict[str, LoopRun]
    bad_batch: DeadLetter


async def _announce_a_batch_that_does_not_fit(infra: Endpoints, tap: EventTap) -> DeadLetter:
    """customer-segment's columns announced as card-fraud's data: the trainer refuses it."""
    frame = generate_customers(500, 99)
    path = infra.run_dir / "data" / f"misfit-{uuid.uuid4().hex[:8]}.parquet"
    ref = await asyncio.to_thread(write_batch, frame, path)
    event = await announce(infra.kafka, ref, model_name=FRAUD.name)
    topic = dead_letter_topic(Topic.DATA_ARRIVED)
    deadline = asyncio.get_running_loop().time() + 180
    while asyncio.get_running_loop().time() < deadline:
        for letter in tap.dead_letters:
            if letter.topic == topic and event.event_id.encode() in letter.value:
                return letter
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the misfit batch {event.event_id} never reached {topic}")


@pytest.fixture(scope="module")
async def loops(infra: Endpoints, stack: dict[str, str]) -> ManyLoops:
    config = DemoConfig(
        kafka_bootstrap=infra.kafka_bootstrap,
        kafka_security=infra.kafka.security,
        gateway_url=stack["gateway"],
        data_dir=infra.run_dir / "data",
        training_rows=3000,
        normal_requests=100,
        shifted_requests=2 * WINDOW,
        router_url=stack["router"],
        registry_url=stack["registry"],
        admin_token=read_admin_token(infra.run_dir),
        concept_rows=2000,
        customers_per_round=150,
        max_experiment_rounds=30,
    )
    # Registered first, so the misfit batch is refused for its columns, not its name.
    await register_models(config, MODELS, print)
    async with EventTap(infra.kafka) as tap:
        bad = asyncio.create_task(_announce_a_batch_that_does_not_fit(infra, tap))
        runs = await run_demos(config, MODELS, say=print)
        return ManyLoops({run.model: run for run in runs}, await bad)


@pytest.fixture(params=[m.name for m in MODELS], ids=["default", "fraud", "value"])
def loop_run(request: pytest.FixtureRequest, loops: ManyLoops) -> LoopRun:
    return loops.runs[request.param]


def _model(run: LoopRun) -> DemoModel:
    return next(m for m in MODELS if m.name == run.model)


async def test_data_arrival_trains_approves_and_serves_a_champion(loop_run: LoopRun) -> None:
    assert loop_run.announced is not None
    assert loop_run.first_trained is not None
    assert loop_run.first_trained.causation_id == loop_run.announced.event_id
    _assert_learned(_model(loop_run), loop_run.first_trained.metrics)
    assert loop_run.champion is not None
    assert loop_run.champion.alias == "champion"
    answer = loop_run.first_prediction
    assert answer["model_version"] == loop_run.champion.version
    assert answer["variant"] == "champion"
    assert loop_run.champion.model_name == loop_run.model
    _assert_answered(_model(loop_run), answer["predictions"][0])


def _assert_learned(model: DemoModel, metrics: ModelMetrics) -> None:
    if model.spec.is_regression:
        # The label's spread is about 390 and its noise 60: a model that learned is near 60.
        assert metrics.rmse is not None
        assert metrics.mae is not None
        assert metrics.rmse < 150
        assert metrics.mae <= metrics.rmse
        assert (metrics.r2 or 0.0) > 0.8
        assert metrics.accuracy is None
    else:
        assert (metrics.accuracy or 0.0) > 0.6
        assert metrics.rmse is None


def _assert_answered(model: DemoModel, row: dict[str, Any]) -> None:
    if model.spec.is_regression:
        assert isinstance(row["value"], float)
        assert 0 < row["value"] < 10_000  # annual values are in the hundreds to thousands
        assert "predicted_class" not in row
        return
    assert set(row["probabilities"]) == set(model.spec.classes)
    assert row["predicted_class"] in row["probabilities"]
    assert row["confidence"] == pytest.approx(max(row["probabilities"].values()))


async def test_drift_retrains_in_the_drifts_turn_of_the_loop(loop_run: LoopRun) -> None:
    drift, retrained = loop_run.drift, loop_run.retrained
    assert drift is not None
    assert retrained is not None
    assert drift.kind == "data"
    assert drift.model_name == loop_run.model
    assert {f.feature for f in drift.features if f.drifted} & SHIFTED[loop_run.model]
    assert retrained.trigger == "drift"
    assert retrained.correlation_id == drift.correlation_id
    assert retrained.causation_id == drift.event_id
    assert retrained.run_id != loop_run.first_trained.run_id  # type: ignore[union-attr]
    assert loop_run.challenger is not None
    assert loop_run.challenger.alias == "challenger"
    assert loop_run.challenger.causation_id == retrained.event_id
    assert loop_run.experiment is not None
    assert loop_run.experiment.status == "running"
    assert loop_run.experiment.challenger_version == loop_run.challenger.version


async def test_the_registry_shows_the_drift_retrains_trigger_chain(
    loop_run: LoopRun, stack: dict[str, str]
) -> None:
    drift, retrained, approved = loop_run.drift, loop_run.retrained, loop_run.challenger
    assert drift is not None
    assert retrained is not None
    assert approved is not None
    path = f"/v1/models/{approved.model_name}/versions/{approved.version}/lineage"
    async with httpx.AsyncClient(base_url=stack["registry"], timeout=30) as client:
        response = await client.get(path)
    assert response.status_code == 200, response.text
    lineage = response.json()
    assert lineage["correlation_id"] == drift.correlation_id
    chain = [(link["type"], link["event_ids"], link["caused_by"]) for link in lineage["chain"]]
    assert chain == [
        ("drift-detected", [drift.event_id], None),
        ("model-trained", [retrained.event_id], drift.event_id),
        ("model-approved", [approved.event_id], retrained.event_id),
    ]


async def test_feedback_is_published_with_the_answering_variant(
    infra: Endpoints, stack: dict[str, str], loop_run: LoopRun
) -> None:
    async with (
        EventTap(infra.kafka) as tap,
        httpx.AsyncClient(base_url=stack["gateway"]) as client,
    ):
        request_id = loop_run.first_prediction["predictions"][0]["request_id"]
        spec = _model(loop_run).spec
        truth: dict[str, object] = (
            {"true_value": 1234.5} if spec.is_regression else {"true_label": spec.classes[0]}
        )
        response = await client.post(
            f"/v1/models/{loop_run.model}/feedback", json={"request_id": request_id, **truth}
        )
        assert response.status_code == 200, response.text
        feedback = await tap.wait_for(FeedbackReceived, lambda e: e.request_id == request_id, 60)
    assert (feedback.model_name, feedback.variant) == (loop_run.model, "champion")
    assert feedback.version == loop_run.first_prediction["model_version"]
    if spec.is_regression:
        answered = loop_run.first_prediction["predictions"][0]["value"]
        assert feedback.true_value == 1234.5
        assert feedback.predicted_value == pytest.approx(answered)
        assert feedback.predicted_class is None
    else:
        assert feedback.correct == (feedback.predicted_class == spec.classes[0])


async def test_malformed_event_is_parked_on_the_dead_letter_topic(
    infra: Endpoints, stack: dict[str, str]
) -> None:
    bad = json.dumps({"type": "data-arrived", "producer": "e2e", "dataset": "nope"}).encode()
    async with EventTap(infra.kafka) as tap:
        await publish_raw(infra.kafka, topic_name(Topic.DATA_ARRIVED), bad)
        letter = await tap.wait_for_dead_letter(dead_letter_topic(Topic.DATA_ARRIVED), 60)
    assert letter.value == bad
    assert letter.headers["x-error-reason"] == "invalid"
    assert "dataset" in letter.headers["x-error"]
    assert letter.headers["x-consumer-group"] == "flywheel-trainer"
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{stack['trainer']}/metrics")).text
    assert 'flywheel_dead_letters_total{reason="invalid",service="trainer"' in metrics


def test_every_service_reports_ready_with_its_dependencies(stack: dict[str, str]) -> None:
    for name, url in stack.items():
        body = httpx.get(f"{url}/readyz").json()
        assert body["ready"] is True, (name, body)
        assert body["checks"]["broker"] is True


async def test_a_better_challenger_ramps_up_and_is_promoted_with_a_report(
    loop_run: LoopRun,
) -> None:
    verdict = loop_run.verdict
    assert verdict is not None
    assert isinstance(verdict.verdict, ModelPromoted)
    assert verdict.challenger is not None
    promoted_version = verdict.verdict.version
    final = verdict.updates[-1]
    # Only the promoted experiment's ramp: a newer challenger may have superseded an
    # earlier experiment (whose own ramp started over) while feedback was flowing.
    shares = [
        u.challenger_share
        for u in verdict.updates
        if u.status == "running" and u.experiment_id == final.experiment_id
    ]
    assert shares == sorted(shares)
    assert shares[-1] == 0.5  # the ramp reached its last stage before the verdict
    assert (final.status, final.decision) == ("promoted", "promote")
    assert final.champion_version == promoted_version
    assert verdict.verdict.causation_id == final.event_id
    assert verdict.opened is not None
    assert verdict.trained is not None
    regression = _model(loop_run).spec.is_regression
    assert verdict.trained.metrics.is_regression == regression
    if regression:
        # A regressor's experiment compares squared errors, declared when it opens.
        assert "primary_metric:squared_error" in (verdict.opened.reason or "")
    assert verdict.report_path is not None
    text = verdict.report_path.read_text()
    assert "decision **promote**" in text
    assert verdict.report_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_a_batch_that_does_not_fit_its_model_is_dead_lettered_naming_the_columns(
    loops: ManyLoops,
) -> None:
    letter = loops.bad_batch
    assert letter.headers["x-error-reason"] == "rejected"
    assert "amount" in letter.headers["x-error"]  # a card-fraud column the batch lacks
    fraud = loops.runs[FRAUD.name]  # its own loop went on to a verdict all the same
    assert fraud.verdict is not None
    assert isinstance(fraud.verdict.verdict, ModelPromoted)


async def test_the_gateway_lists_every_model_and_keeps_the_default_models_routes(
    loops: ManyLoops, stack: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=stack["gateway"], timeout=30) as client:
        listed = (await client.get("/v1/models")).json()
        row = loops.runs[FRAUD.name].first_prediction
        old_route = await client.post("/v1/predict", json={"instances": [_row(DEFAULT)]})
        unknown = await client.post("/v1/models/nope/predict", json={"instances": [{}]})
    assert {m.name for m in MODELS} <= set(listed["by_model"])
    assert listed["default_model"] == DEFAULT.name
    assert row["model_version"]
    assert old_route.status_code == 200, old_route.text
    assert old_route.json()["predictions"][0]["predicted_class"] in DEFAULT.spec.classes
    assert unknown.status_code == 404
    assert FRAUD.name in unknown.text


async def test_each_model_has_its_own_routing_table(
    loops: ManyLoops, stack: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=stack["router"], timeout=30) as client:
        tables = {
            m.name: (await client.get("/v1/experiments/current", params={"model": m.name})).json()
            for m in MODELS
        }
    for name, table in tables.items():
        assert table["model_name"] == name
        assert table["champion_version"] == loops.runs[name].verdict.verdict.version  # type: ignore[union-attr]


def _row(model: DemoModel) -> dict[str, object]:
    frame = model.generate(1, 5, 0.0, False).drop(columns=[model.spec.label])
    return {str(k): v for k, v in frame.to_dict(orient="records")[0].items()}
