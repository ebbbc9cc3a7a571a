"""Helpers the integration tests share: free ports and a small champion in a real MLflow."""

from __future__ import annotations

import socket

import mlflow
import mlflow.sklearn
from mlflow.tracking import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from flywheel.infra import Endpoints
from shared.datasets import generate_customers
from shared.spec import load_spec

SPEC = load_spec()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def register_champion(infra: Endpoints, name: str) -> str:
    """A small model with its reference sample, as the trainer logs them, made champion.

    Returns the registered version.
    """
    frame = generate_customers(400, seed=11)
    features = ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(SPEC.numeric_features)),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore"),
                list(SPEC.categorical_features),
            ),
        ]
    )
    pipeline = Pipeline([("features", features), ("classifier", LogisticRegression())])
    pipeline.fit(frame[list(SPEC.feature_names)], frame[SPEC.label])
    mlflow.set_tracking_uri(infra.mlflow_uri)
    mlflow.set_experiment(name)
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(pipeline, name="model", pip_requirements=["scikit-learn"])
        mlflow.log_metric("accuracy", 0.9)
        folder = infra.run_dir / name
        folder.mkdir()
        frame[list(SPEC.feature_names)].to_parquet(folder / "features.parquet")
        mlflow.log_artifact(str(folder / "features.parquet"), artifact_path="reference")
    version = str(mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version)
    MlflowClient(infra.mlflow_uri).set_registered_model_alias(name, "champion", version)
    return version
