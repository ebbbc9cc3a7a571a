"""The registry's gates, aliases and rollback against real MLflow and Kafka."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from _support import free_port
from mlflow.tracking import MlflowClient
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from flywheel.cli import app as cli
from flywheel.infra import Endpoints
from flywheel.loop import EventTap
from services.registry.adapters import MlflowCandidateLoader, MlflowModelRegistry
from services.registry.app import create_app
from services.registry.gates import GatePolicy
from services.registry.handlers import RegistryHandlers
from services.registry.metrics import RegistryMetrics
from services.registry.settings import Settings
from services.trainer.adapters import MlflowModelStore
from services.trainer.core import TrainingConfig, build_pipeline, data_version, train
from services.trainer.ports import RunContext
from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec
from shared.datasets import generate_customers, write_batch
from shared.events import ModelRejected, ModelRolledBack, ModelTrained
from shared.spec import load_spec
from shared.testing import RecordingPublisher

pytestmark = pytest.mark.integration

SPEC = load_spec()
TOKEN = "it-token"


def _logged(infra: Endpoints, name: str, tmp_path: Path, seed: int, worse: bool) -> ModelTrained:
    """Train and log a real candidate; a ``worse`` one is refitted on shuffled labels."""
    frame = generate_customers(2500, seed)
    ref = write_batch(frame, tmp_path / f"b{seed}.parquet")
    model = train(frame, SPEC, TrainingConfig())
    if worse:  # same clean holdout, a model that learned nothing
        shuffled = frame["segment"].sample(frac=1, random_state=seed).to_numpy()
        features = frame[list(SPEC.feature_names)]
        bad = build_pipeline(SPEC, LogisticRegression()).fit(features, shuffled)
        model = dataclasses.replace(model, pipeline=bad)
    context = RunContext(name, data_version([ref.sha256]), "data", "e", "c", (ref,))
    run_id = MlflowModelStore(infra.mlflow_uri).log_training(model, context)
    return ModelTrained(
        producer="test",
        model_name=name,
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        algorithm=model.algorithm,
        metrics=model.metrics.model_copy(
            update={"accuracy": max(model.metrics.accuracy or 0.0, 0.7)}
        ),
        data_version=context.data_version,
    )


def _handlers(infra: Endpoints, publisher: RecordingPublisher, name: str) -> RegistryHandlers:
    return RegistryHandlers(
        models=MlflowModelRegistry(infra.mlflow_uri),
        loader=MlflowCandidateLoader(infra.mlflow_uri),
        catalog=ModelCatalog(InMemorySpecSource({name: RegisteredSpec(1, SPEC)})),
        publisher=publisher,
        metrics=RegistryMetrics.create(CollectorRegistry()),
        policy=GatePolicy(latency_budget_ms=250.0),
    )


async def test_gates_aliases_and_a_worse_model_rejected_with_its_numbers(
    infra: Endpoints, tmp_path: Path
) -> None:
    name = f"it-registry-{uuid.uuid4().hex[:8]}"
    publisher = RecordingPublisher()
    handlers = _handlers(infra, publisher, name)
    first, second = (_logged(infra, name, tmp_path, s, worse=False) for s in (1, 2))
    worse = _logged(infra, name, tmp_path, 3, worse=True)

    await handlers.on_model_trained(first)
    await handlers.on_model_trained(first)  # redelivery: same version, still champion
    await handlers.on_model_trained(second)
    await handlers.on_model_trained(worse)

    client = MlflowClient(infra.mlflow_uri)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert client.get_model_version_by_alias(name, "challenger").version == "2"
    assert [type(e).__name__ for e in publisher.events] == ["ModelApproved"] * 3 + ["ModelRejected"]
    rejected = publisher.events[-1]
    assert isinstance(rejected, ModelRejected)
    [gate] = [g for g in rejected.reasons if g.name == "non_inferiority"]
    assert "vs champion v1" in gate.detail
    assert "95% CI [" in gate.detail
    tags = client.get_model_version(name, "3").tags
    assert tags["gate.non_inferiority"].startswith("failed: accuracy ")
    assert tags["flywheel.run_id"] == worse.run_id
    assert name in MlflowModelRegistry(infra.mlflow_uri).list_models()
    approved = client.get_model_version(name, "2").tags
    for check in ("schema", "finite_output", "determinism", "latency", "non_inferiority"):
        assert approved[f"gate.{check}"].startswith("passed: "), check


@pytest.fixture
async def registry_url(
    infra_env: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, str]]:
    """The registry app on a free port for a fresh model name; yields (url, model name)."""
    name = f"it-rollback-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FLYWHEEL_MODEL_NAME", name)
    monkeypatch.setenv("REGISTRY_ADMIN_TOKEN", TOKEN)
    port = free_port()
    app = create_app(Settings(port=port), name=f"registry-it-{uuid.uuid4().hex[:8]}")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", name
    finally:
        server.should_exit = True
        await task


async def test_flywheel_rollback_restores_the_previous_champion(
    infra: Endpoints, registry_url: tuple[str, str], tmp_path: Path
) -> None:
    url, name = registry_url
    handlers = _handlers(infra, RecordingPublisher(), name)
    for seed in (1, 2):
        await handlers.on_model_trained(_logged(infra, name, tmp_path, seed, worse=False))
    runner = CliRunner()
    args = ["--model", name, "--registry-url", url]

    refused = await asyncio.to_thread(runner.invoke, cli, ["rollback", *args, "--token", "no"])
    promoted = await asyncio.to_thread(runner.invoke, cli, ["promote", *args])
    async with EventTap(infra.kafka) as tap:
        rolled = await asyncio.to_thread(runner.invoke, cli, ["rollback", *args])
        event = await tap.wait_for(ModelRolledBack, lambda e: e.model_name == name, 60)

    assert refused.exit_code == 1
    assert "401" in refused.output
    assert promoted.exit_code == 0, promoted.output
    assert rolled.exit_code == 0, rolled.output
    assert (event.version, event.rolled_back_version) == ("1", "2")
    client = MlflowClient(infra.mlflow_uri)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert isinstance(event, ModelRolledBack)


async def test_registry_answers_503_with_the_cause_while_mlflow_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens on this port: MLflow is down. With MLflow's own retry defaults each
    # request was held ~4 minutes and then answered 500.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    for knob in ("TIMEOUT", "MAX_RETRIES", "BACKOFF_FACTOR"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{knob}", raising=False)  # the service's own
    app = create_app(Settings(), name=f"registry-{uuid.uuid4().hex[:8]}")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        async with asyncio.timeout(30):
            listed = await client.get("/v1/models")
            versions = await client.get("/v1/models/any/versions")
    for answer in (listed, versions):
        assert answer.status_code == 503, answer.text
        assert "MLflow" in answer.json()["detail"]
        assert answer.headers["Retry-After"]
