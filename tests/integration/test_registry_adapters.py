"""The registry's handler and MLflow adapter against a real MLflow registry."""

from __future__ import annotations

import uuid

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LogisticRegression

from flywheel.infra import Endpoints
from services.registry.adapters import MlflowModelRegistry
from services.registry.handlers import RegistryHandlers
from services.registry.metrics import RegistryMetrics
from shared.events import ModelApproved, ModelMetrics, ModelRejected, ModelTrained
from shared.testing import RecordingPublisher

pytestmark = pytest.mark.integration


def _logged_run(uri: str, experiment: str) -> str:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], ["a", "a", "b", "b"])
        mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
        return str(run.info.run_id)


def _trained(name: str, run_id: str, accuracy: float) -> ModelTrained:
    return ModelTrained(
        producer="test",
        model_name=name,
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        algorithm="logistic_regression",
        metrics=ModelMetrics(accuracy=accuracy, macro_f1=0.7, log_loss=0.5, validation_rows=10),
        data_version="d" * 64,
    )


async def test_versions_are_registered_gated_tagged_and_aliased(infra: Endpoints) -> None:
    name = f"test-registry-{uuid.uuid4().hex[:8]}"
    models, publisher = MlflowModelRegistry(infra.mlflow_uri), RecordingPublisher()
    handlers = RegistryHandlers(models, publisher, RegistryMetrics.create(CollectorRegistry()), 0.6)
    runs = [_logged_run(infra.mlflow_uri, name) for _ in range(3)]
    first = _trained(name, runs[0], 0.8)

    await handlers.on_model_trained(first)
    await handlers.on_model_trained(first)  # redelivery: same version, still champion
    await handlers.on_model_trained(_trained(name, runs[1], 0.9))
    await handlers.on_model_trained(_trained(name, runs[2], 0.2))

    client = MlflowClient(infra.mlflow_uri)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert client.get_model_version_by_alias(name, "challenger").version == "2"
    assert [type(e) for e in publisher.events] == [ModelApproved] * 3 + [ModelRejected]
    rejected = client.get_model_version(name, "3")
    assert rejected.tags["gate.accuracy"] == "failed: accuracy 0.2000 < 0.6000"
    assert rejected.tags["flywheel.run_id"] == runs[2]
    listed = models.list_versions(name)
    assert [(v.version, v.aliases) for v in listed] == [
        ("3", ()),
        ("2", ("challenger",)),
        ("1", ("champion",)),
    ]
