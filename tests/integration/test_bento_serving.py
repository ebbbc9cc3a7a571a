"""An approved version goes into the BentoML store, and ``bentoml serve`` answers like Flywheel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from _support import free_port
from prometheus_client import CollectorRegistry

from flywheel.infra import Endpoints
from services.registry.adapters import MlflowCandidateLoader, MlflowModelRegistry
from services.registry.gates import GatePolicy
from services.registry.handlers import RegistryHandlers
from services.registry.metrics import RegistryMetrics
from services.registry.packaging import BentoModelStore
from services.trainer.adapters import MlflowModelStore
from services.trainer.core import TrainingConfig, data_version, train
from services.trainer.ports import RunContext
from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec
from shared.datasets import generate_customers, write_batch
from shared.events import ModelTrained
from shared.spec import load_spec
from shared.testing import RecordingPublisher

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec()


@pytest.fixture(scope="module")
def approved(infra: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """A trained MLP pipeline, registered, gated, approved and packaged; (name, tag, home).

    One per module: BentoML fixes its store directory the first time a process uses it.
    """
    tmp_path = tmp_path_factory.mktemp("bento")
    name, home = (
        f"it-bento-{uuid.uuid4().hex[:8]}",
        infra.run_dir / f"bentoml-{uuid.uuid4().hex[:6]}",
    )
    frame = generate_customers(2000, 4)
    ref = write_batch(frame, tmp_path / "b.parquet")
    model = train(frame, SPEC, TrainingConfig(candidates=("torch_mlp",), device="cpu"))
    context = RunContext(name, data_version([ref.sha256]), "data", "e", "c", (ref,))
    run_id = MlflowModelStore(infra.mlflow_uri).log_training(model, context)
    publisher = RecordingPublisher()
    handlers = RegistryHandlers(
        models=MlflowModelRegistry(infra.mlflow_uri),
        loader=MlflowCandidateLoader(infra.mlflow_uri),
        catalog=ModelCatalog(InMemorySpecSource({name: RegisteredSpec(1, SPEC)})),
        publisher=publisher,
        metrics=RegistryMetrics.create(CollectorRegistry()),
        policy=GatePolicy(latency_budget_ms=250.0),
        packager=BentoModelStore(home),
    )
    trained = ModelTrained(
        producer="test",
        model_name=name,
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        algorithm=model.algorithm,
        metrics=model.metrics,
        data_version=context.data_version,
    )
    handlers._register_and_decide(trained, RegisteredSpec(1, SPEC))
    tags = MlflowModelRegistry(infra.mlflow_uri).list_versions(name)[0].tags
    return name, tags["flywheel.bento_tag"], home


@pytest.fixture
def served(approved: tuple[str, str, Path]) -> Iterator[str]:
    """``bentoml serve`` for the approved version on a free port; yields its URL."""
    _, tag, home = approved
    port = free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "FLYWHEEL_BENTO_MODEL": tag,
    }
    argv = [sys.executable, "-m", "bentoml", "serve", "bento_service:FlywheelModel"]
    process = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert process.poll() is None, "bentoml serve exited"
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_bentoml_serve_answers_like_flywheels_own_loader(
    infra: Endpoints, approved: tuple[str, str, Path], served: str
) -> None:
    name, tag, _ = approved
    assert tag == f"{name}:v1"
    rows = generate_customers(20, 7)[list(SPEC.feature_names)]
    response = httpx.post(
        f"{served}/predict", json={"rows": rows.to_dict(orient="records")}, timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    flywheel = mlflow.sklearn.load_model(f"models:/{name}/1")
    expected = flywheel.predict_proba(rows)
    classes = [str(c) for c in flywheel.classes_]
    got = np.array([[p["probabilities"][c] for c in classes] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert [p["predicted_class"] for p in body["predictions"]] == list(flywheel.predict(rows))
    assert body["model_version"] == "1"


def test_bentoml_build_packages_the_approved_version(approved: tuple[str, str, Path]) -> None:
    _, tag, home = approved
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "FLYWHEEL_BENTO_MODEL": tag,
    }
    bentoml = [sys.executable, "-m", "bentoml"]
    built = subprocess.run(
        [*bentoml, "build"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stdout + built.stderr
    found = subprocess.run(
        [*bentoml, "get", "flywheel-model:latest", "-o", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr
    bento = json.loads(found.stdout)
    packaged = [m["tag"] for s in bento["services"] for m in s["models"]]
    assert packaged == [tag]
