"""Experiments between two regressors: the spec's loss decides, from feedback events."""

from __future__ import annotations

import random

import httpx
import pytest
from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from test_router_handlers import MODEL, PLAN, Router, close_all

from services.router.core import Experiment, experiment_id_for
from services.router.handlers import ApprovalHandler, register
from services.router.routes import experiments_router
from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec
from shared.events import (
    FeedbackReceived,
    ModelApproved,
    ModelMetrics,
    ModelPromoted,
    ModelRolledBack,
    PredictionFailed,
    PredictionLogged,
    Variant,
)
from shared.http_errors import install_error_handlers
from shared.spec import ModelSpec
from shared.testing import consumer_context


def regression_spec(loss: str = "squared") -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": MODEL,
            "label": "spend",
            "task": "regression",
            "loss": loss,
            "features": [{"name": "tenure", "type": "numeric"}],
        }
    )


class RegressionRouter(Router):
    """The router's handlers with a catalog in which the model is a regressor."""

    def __init__(self, loss: str = "squared") -> None:
        super().__init__()
        catalog = ModelCatalog(
            InMemorySpecSource({MODEL: RegisteredSpec(1, regression_spec(loss))})
        )
        self.approvals = ApprovalHandler(self.store, self.publisher, self.metrics, PLAN, catalog)
        self.broker = KafkaBroker()
        register(consumer_context("router", self.broker), self.approvals, self.outcomes)


def regressor_approval() -> ModelApproved:
    return ModelApproved(
        producer="registry",
        model_name=MODEL,
        version="2",
        run_id="run-2",
        alias="challenger",
        champion_version="1",
        metrics=ModelMetrics(rmse=1.0, mae=0.8, r2=0.6, validation_rows=50),
    )


def regression_pair(
    experiment_id: str, variant: Variant, share: float, error: float
) -> tuple[PredictionLogged, FeedbackReceived]:
    """A routed regression answer (no class, no confidence) and its true value."""
    version = "2" if variant == "challenger" else "1"
    common = {"model_name": MODEL, "version": version, "variant": variant}
    routed = {"experiment_id": experiment_id, "challenger_share": share}
    true_value = 100.0 + random.random()
    prediction = PredictionLogged(
        producer="gateway",
        request_id=f"r-{random.random()}",
        features={"tenure": 3.0},
        predicted_value=true_value + error,
        latency_ms=3.0,
        **common,
        **routed,
    )
    feedback = FeedbackReceived(
        producer="gateway",
        request_id=prediction.request_id,
        predicted_value=prediction.predicted_value,
        true_value=true_value,
        **common,
        **routed,
    )
    return prediction, feedback


async def drive_regression(
    router: Router, experiment_id: str, sd_a: float, sd_b: float, max_events: int = 6000
) -> Experiment:
    """Routed regression answers and their true values by the current split until a verdict."""
    rng = random.Random(7)
    for _ in range(max_events // 20):
        state = await router.store.get(MODEL, experiment_id)
        assert state is not None
        if not state.is_running or state.decision == "hold":
            return state
        for _ in range(20):
            variant: Variant = "challenger" if rng.random() < state.challenger_share else "champion"
            error = rng.gauss(0.0, sd_b if variant == "challenger" else sd_a)
            prediction, feedback = regression_pair(
                experiment_id, variant, state.challenger_share, error
            )
            await router.outcomes.on_prediction(prediction)
            await router.outcomes.on_feedback(feedback)
    final = await router.store.get(MODEL, experiment_id)
    assert final is not None
    return final


async def test_a_regressor_with_a_clearly_lower_loss_is_promoted() -> None:
    router = RegressionRouter()
    cause = regressor_approval()
    await router.deliver(cause)
    opened = router.updates()[0]
    assert (opened.status, opened.reason) == ("running", "primary_metric:squared_error")
    final = await drive_regression(router, experiment_id_for(cause), sd_a=2.0, sd_b=1.0)
    assert (final.status, final.decision) == ("promoted", "promote")
    assert final.plan.decision.metric == "squared_error"
    assert final.last_look is not None
    assert final.last_look.primary is not None
    assert final.last_look.primary.lower_is_better
    assert final.last_look.primary.always_valid_ci[1] < 0  # the challenger's loss is lower
    assert router.aliases.calls == [("promote", "2", "1")]
    assert len(router.publisher.of_type(ModelPromoted)) == 1
    steps = [(u.status, u.challenger_share) for u in router.updates()]
    assert steps == [("running", 0.1), ("running", 0.5), ("promoted", 0.0)]


async def test_a_regressor_with_a_clearly_higher_loss_is_rolled_back() -> None:
    router = RegressionRouter(loss="absolute")
    cause = regressor_approval()
    await router.approvals(cause)
    final = await drive_regression(router, experiment_id_for(cause), sd_a=1.0, sd_b=2.0)
    assert (final.status, final.decision, final.reasons) == (
        "rolled_back",
        "rollback",
        ("primary_worse",),
    )
    assert final.plan.decision.metric == "absolute_error"
    (rolled_back,) = router.publisher.of_type(ModelRolledBack)
    assert isinstance(rolled_back, ModelRolledBack)
    assert rolled_back.rolled_back_version == "2"


async def test_equally_good_regressors_reach_no_verdict_early() -> None:
    router = RegressionRouter()
    cause = regressor_approval()
    await router.approvals(cause)
    state = await drive_regression(router, experiment_id_for(cause), 1.0, 1.0, max_events=1000)
    assert state.is_running
    assert state.decision in ("continue", None)


async def test_regression_events_through_the_broker_count_and_report_the_loss() -> None:
    router = RegressionRouter()
    cause = regressor_approval()
    await router.deliver(cause)
    experiment_id = experiment_id_for(cause)
    events: list[PredictionLogged | FeedbackReceived | PredictionFailed] = []
    for i in range(4):
        variant: Variant = "challenger" if i % 2 else "champion"
        events += regression_pair(experiment_id, variant, 0.1, error=1.0 + i)
    events.append(
        PredictionFailed(
            producer="gateway",
            request_id="failed",
            model_name=MODEL,
            version="2",
            variant="challenger",
            error_type="ValueError",
            latency_ms=1.0,
            experiment_id=experiment_id,
            challenger_share=0.1,
        )
    )
    await router.deliver(*events)
    await close_all(router, experiment_id)
    stats = await router.tally.stats(MODEL, experiment_id)
    assert (stats.champion.assigned, stats.challenger.assigned) == (2, 3)
    assert (stats.champion.loss_n, stats.challenger.loss_n, stats.challenger.errors) == (2, 2, 1)
    assert (stats.champion.labelled, stats.open_outcomes) == (0, 0)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(experiments_router(router.store, router.tally, MODEL))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        report = (await client.get(f"/v1/experiments/{experiment_id}/report")).json()
    assert report["primary_metric"] == "squared_error"
    champion, challenger = report["arms"]["champion"], report["arms"]["challenger"]
    # Errors 1 and 3 (champion), 2 and 4 (challenger): mean squared error 5 and 10.
    assert champion["mean_loss"] == pytest.approx(5.0)
    assert challenger["rmse"] == pytest.approx(10**0.5)
    assert (champion["loss_outcomes"], champion["accuracy"], champion["mae"]) == (2, None, None)
    assert report["primary"]["name"] == "squared_error"
    assert report["primary"]["diff"] == pytest.approx(5.0)
    assert report["primary"]["lower_is_better"] is True
