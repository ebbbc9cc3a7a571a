"""A BentoML service for one approved Flywheel model version.

The registry imports every approved version into the BentoML store as
``<model>:v<version>``; ``FLYWHEEL_BENTO_MODEL`` picks the one to serve::

    FLYWHEEL_BENTO_MODEL=customer-segment:v3 bentoml serve bento_service:FlywheelModel
    FLYWHEEL_BENTO_MODEL=customer-segment:v3 bentoml build   # uses bentofile.yaml

The pipeline is the one MLflow holds (preprocessing included), so answers match
the gateway's for the same row.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np
import pandas as pd

from shared.spec import load_spec

MODEL_TAG = os.environ.get("FLYWHEEL_BENTO_MODEL", "customer-segment:latest")


@bentoml.service(name="flywheel-model", traffic={"timeout": 30})
class FlywheelModel:
    """Class probabilities and the predicted class for rows of the model spec's features."""

    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.pipeline = bentoml.sklearn.load_model(self.model_ref)
        self.features = list(load_spec().feature_names)
        self.version = str(self.model_ref.info.labels.get("registered_version", "?"))

    @bentoml.api  # type: ignore[untyped-decorator]
    def predict(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """One answer per row: predicted class and probability of every class."""
        frame = pd.DataFrame(rows, columns=self.features)
        probabilities = self.pipeline.predict_proba(frame)
        classes = [str(c) for c in self.pipeline.classes_]
        answers = [
            {
                "predicted_class": classes[int(np.argmax(row))],
                "probabilities": dict(zip(classes, map(float, row), strict=True)),
            }
            for row in probabilities
        ]
        return {"model_version": self.version, "predictions": answers}
