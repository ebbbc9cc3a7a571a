"""Registry handler with any model: regression candidates through every gate, and each way a
candidate cannot be gated (no holdout, an unusable flavour, another task) named in a
model-rejected, never a dead letter. Real sklearn models, fake storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
from _registry_fakes import FakeModelRegistry
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import CollectorRegistry
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from services.registry.gates import GatePolicy
from services.registry.handlers import RegistryHandlers, register
from services.registry.metrics import RegistryMetrics
from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec
from shared.datasets import generate_customers
from shared.errors import NotFoundError
from shared.events import (
    GateResult,
    ModelApproved,
    ModelMetrics,
    ModelRejected,
    ModelTrained,
    Topic,
    dead_letter_topic,
)
from shared.scoring import EstimatorScorer, Scorer, UnusableModelError
from shared.spec import ModelSpec, load_spec
from shared.testing import RecordingPublisher, consumer_context

CLASSIFIER = load_spec()
SPEND = ModelSpec(
    name="spend", label="lifetime_value", task="regression", features=CLASSIFIER.features
)


def _customers(n: int, seed: int) -> pd.DataFrame:
    """Customers with a label a linear model can learn (the generator's columns are
    independent of each other)."""
    frame = generate_customers(n, seed)
    noise = np.random.default_rng(seed).normal(0, 5, size=n)
    return frame.assign(lifetime_value=3 * frame["age"] + 2 * frame["tenure_months"] + noise)


@cache
def _regressor(kind: str) -> Any:
    """A fitted pipeline: "good" (ridge), or "bad" (always the mean)."""
    frame = _customers(1500, 3)
    encode = ColumnTransformer(
        [("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])], remainder="passthrough"
    )
    model = Ridge() if kind == "good" else DummyRegressor()
    pipeline = Pipeline([("encode", encode), ("model", model)])
    return pipeline.fit(frame[list(SPEND.feature_names)], frame[SPEND.label])


@cache
def _holdout() -> pd.DataFrame:
    return _customers(500, 99)


class NoisyPyfunc:
    """Stands in for a pyfunc model whose outputs do not fit the spec."""

    flavor = "pyfunc"

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        raise UnusableModelError("pyfunc", "output of shape (500, 4), expected (n, 3)")

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        raise UnusableModelError("pyfunc", "output is not numeric (<U4)")


@dataclass
class ScorerLoader:
    """Scorers by run id (``models:/name/v`` through the fake registry), holdouts by run."""

    registry: FakeModelRegistry
    models: dict[str, Any] = field(default_factory=dict)
    flavors: dict[str, str] = field(default_factory=dict)
    unloadable: dict[str, str] = field(default_factory=dict)
    without_holdout: set[str] = field(default_factory=set)

    def load(self, model_uri: str, spec: ModelSpec) -> Scorer:
        run_id = self._run(model_uri)
        if run_id in self.unloadable:
            raise UnusableModelError(self.flavors[run_id], self.unloadable[run_id])
        model = self.models[run_id]
        if isinstance(model, NoisyPyfunc):
            return model
        return EstimatorScorer(self.flavors.get(run_id, "sklearn"), model, spec)

    def sklearn_model(self, model_uri: str) -> Any:
        return self.models[self._run(model_uri)]

    def input_names(self, model_uri: str) -> list[str] | None:
        return None  # logged without a signature, as models trained elsewhere often are

    def holdout(self, run_id: str) -> pd.DataFrame:
        if run_id in self.without_holdout:
            raise NotFoundError(f"run {run_id} logged no holdout")
        return _holdout()

    def _run(self, model_uri: str) -> str:
        if model_uri.startswith("models:/"):
            name, version = model_uri.removeprefix("models:/").split("/")
            run_id = self.registry._version(name, version).run_id
            assert run_id is not None
            return run_id
        return model_uri.removeprefix("runs:/").removesuffix("/model")


@dataclass
class RecordingPackager:
    packaged: list[str] = field(default_factory=list)

    def package(self, name: str, version: str, model: Any, metadata: dict[str, Any]) -> str:
        self.packaged.append(f"{name}:v{version}")
        return f"{name}:v{version}"


@dataclass
class Harness:
    broker: KafkaBroker
    models: FakeModelRegistry
    loader: ScorerLoader
    publisher: RecordingPublisher
    packager: RecordingPackager
    dead_letters: list[dict[str, str]]
    prometheus: CollectorRegistry

    def trained(
        self, run_id: str, model: Any, model_name: str = SPEND.name, flavor: str = "sklearn"
    ) -> ModelTrained:
        self.models.runs.add(run_id)
        self.loader.models[run_id] = model
        self.loader.flavors[run_id] = flavor
        regression = model_name == SPEND.name
        metrics = (
            ModelMetrics(rmse=20.0, mae=15.0, r2=0.7, validation_rows=400)
            if regression
            else ModelMetrics(accuracy=0.8, macro_f1=0.7, validation_rows=400)
        )
        return ModelTrained(
            producer="trainer",
            model_name=model_name,
            run_id=run_id,
            model_uri=f"runs:/{run_id}/model",
            algorithm="ridge",
            metrics=metrics,
            data_version="d" * 64,
            trigger="import",
        )

    async def send(self, *events: ModelTrained) -> None:
        async with TestKafkaBroker(self.broker) as test_broker:
            for event in events:
                body = event.model_dump_json().encode()
                await test_broker.publish(body, Topic.MODEL_TRAINED.value)

    def rejected(self) -> ModelRejected:
        [rejected] = self.publisher.of_type(ModelRejected)
        assert isinstance(rejected, ModelRejected)
        return rejected


def _harness(spec: ModelSpec = SPEND) -> Harness:
    broker = KafkaBroker()
    models, publisher, packager = FakeModelRegistry(), RecordingPublisher(), RecordingPackager()
    loader = ScorerLoader(models)
    prometheus = CollectorRegistry()
    catalog = ModelCatalog(
        InMemorySpecSource(
            {SPEND.name: RegisteredSpec(1, SPEND), CLASSIFIER.name: RegisteredSpec(1, CLASSIFIER)}
        )
    )
    policy = GatePolicy(latency_budget_ms=1000.0, latency_samples=20)
    metrics = RegistryMetrics.create(prometheus)
    handlers = RegistryHandlers(models, loader, catalog, publisher, metrics, policy, packager)
    register(consumer_context("registry", broker), handlers)
    dead: list[dict[str, str]] = []

    @broker.subscriber(dead_letter_topic(Topic.MODEL_TRAINED))
    async def park(message: KafkaMessage) -> None:
        dead.append(dict(message.headers))

    return Harness(broker, models, loader, publisher, packager, dead, prometheus)


def _gate(rejected: ModelRejected, name: str) -> GateResult:
    [gate] = [g for g in rejected.reasons if g.name == name]
    return gate


async def test_a_regressor_is_approved_through_every_gate_then_a_worse_one_is_rejected() -> None:
    h = _harness()
    await h.send(h.trained("r1", _regressor("good")), h.trained("r2", _regressor("bad")))

    [approved] = h.publisher.of_type(ModelApproved)
    assert isinstance(approved, ModelApproved)
    assert (approved.version, approved.alias) == ("1", "champion")
    tags = h.models.versions[SPEND.name][0].tags
    for gate in ("r2", "rmse", "finite_metrics", "schema", "finite_output", "determinism"):
        assert tags[f"gate.{gate}"].startswith("passed: "), gate
    assert tags["flywheel.task"] == "regression"
    worse = _gate(h.rejected(), "non_inferiority")
    assert "vs champion v1 on 500 fresh holdout rows" in worse.detail
    assert "RMSE" in worse.detail
    assert "MAE" in worse.detail
    assert "> allowed" in worse.detail
    assert h.models.aliases[SPEND.name] == {"champion": "1"}
    assert h.dead_letters == []


async def test_an_equal_regressor_passes_non_inferiority_with_both_intervals() -> None:
    h = _harness()
    await h.send(h.trained("r1", _regressor("good")), h.trained("r2", _regressor("good")))

    approved = [e for e in h.publisher.events if isinstance(e, ModelApproved)]
    assert [e.alias for e in approved] == ["champion", "challenger"]
    detail = h.models.versions[SPEND.name][1].tags["gate.non_inferiority"]
    assert detail.startswith("passed: ")
    assert detail.count("95% CI") == 2


async def test_a_run_without_a_holdout_is_rejected_saying_how_to_supply_one() -> None:
    h = _harness()
    h.loader.without_holdout.add("r1")
    await h.send(h.trained("r1", _regressor("good")))

    gate = _gate(h.rejected(), "holdout")
    assert "run r1 logged no holdout" in gate.detail
    assert "holdout/validation.parquet" in gate.detail
    assert "flywheel models import spend --model-uri URI --holdout FILE" in gate.detail
    assert "'lifetime_value'" in gate.detail
    assert h.dead_letters == []


async def test_a_model_that_cannot_be_loaded_is_rejected_naming_the_flavour_problem() -> None:
    h = _harness()
    event = h.trained("r1", _regressor("good"), flavor="xgboost")
    h.loader.unloadable["r1"] = "cannot be loaded: ModuleNotFoundError('xgboost')"
    await h.send(event)

    gate = _gate(h.rejected(), "model")
    assert gate.detail == "xgboost model: cannot be loaded: ModuleNotFoundError('xgboost')"
    assert h.dead_letters == []


async def test_a_model_whose_outputs_do_not_fit_the_spec_is_rejected_naming_them() -> None:
    h = _harness(CLASSIFIER)
    await h.send(h.trained("r1", NoisyPyfunc(), model_name=CLASSIFIER.name, flavor="pyfunc"))

    gate = _gate(h.rejected(), "model")
    assert gate.detail == "pyfunc model: output of shape (500, 4), expected (n, 3)"


async def test_a_regressor_for_a_classification_model_fails_the_task_gate() -> None:
    h = _harness()
    event = h.trained("r1", _regressor("good")).model_copy(update={"model_name": CLASSIFIER.name})
    await h.send(event)

    [gate] = h.rejected().reasons
    assert gate.name == "task"
    assert "task changed" in gate.detail


async def test_a_regression_candidate_against_a_classification_champion_names_the_change() -> None:
    h = _harness()
    await h.send(h.trained("r1", _regressor("good")))
    # The champion was gated as a classifier (the deployment's spec changed task since).
    h.models.set_tags(SPEND.name, "1", {"flywheel.task": "classification"})
    await h.send(h.trained("r2", _regressor("good")))

    gate = _gate(h.rejected(), "non_inferiority")
    assert "task changed: champion v1 is a classification model" in gate.detail
    assert "this candidate a regression one" in gate.detail


async def test_packaging_skips_other_flavours_with_a_metric_and_still_approves() -> None:
    h = _harness()
    await h.send(
        h.trained("r1", _regressor("good"), flavor="lightgbm"),
        h.trained("r2", _regressor("good")),
    )

    assert len(h.publisher.of_type(ModelApproved)) == 2
    assert h.packager.packaged == ["spend:v2"]
    skipped = "flywheel_registry_packaging_skipped_total"
    labels = {"model_name": SPEND.name, "flavor": "lightgbm"}
    assert h.prometheus.get_sample_value(skipped, labels) == 1
    assert h.prometheus.get_sample_value(skipped, {**labels, "flavor": "sklearn"}) is None
