"""Candidate models: the torch MLP inside the pipeline, sklearn candidates, picking the best."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from services.trainer.core import TrainingConfig, combine_batches, is_better, train
from shared.datasets import generate_customers
from shared.events import ModelMetrics
from shared.spec import ModelSpec, load_spec
from shared.torch_mlp import TorchMLPClassifier

ALL = ("logistic_regression", "hist_gradient_boosting", "torch_mlp")


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec()


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return combine_batches([generate_customers(1500, seed) for seed in (1, 2)])


def _toy(rows: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype("float32")
    return x, np.where(x[:, 0] - x[:, 2] > 0, "up", "down")


def test_the_mlp_pipeline_is_deterministic_with_a_seed_on_cpu(
    spec: ModelSpec, frame: pd.DataFrame
) -> None:
    config = TrainingConfig(candidates=("torch_mlp",), device="cpu", seed=5)
    first, second = train(frame, spec, config), train(frame, spec, config)
    rows = frame[list(spec.feature_names)].head(200)
    assert first.algorithm == "torch_mlp"
    assert first.device == "cpu"
    np.testing.assert_array_equal(
        first.pipeline.predict_proba(rows), second.pipeline.predict_proba(rows)
    )
    other = train(frame, spec, TrainingConfig(candidates=("torch_mlp",), device="cpu", seed=6))
    assert not np.array_equal(
        first.pipeline.predict_proba(rows), other.pipeline.predict_proba(rows)
    )
    assert (first.metrics.accuracy or 0.0) > 0.7


def test_the_saved_pipeline_carries_its_preprocessing_and_needs_no_torch_to_predict(
    spec: ModelSpec, frame: pd.DataFrame
) -> None:
    model = train(frame, spec, TrainingConfig(candidates=("torch_mlp",), device="cpu"))
    restored = pickle.loads(pickle.dumps(model.pipeline))
    raw = frame[list(spec.feature_names)].tail(50)  # unscaled, categorical as strings
    np.testing.assert_allclose(restored.predict_proba(raw), model.pipeline.predict_proba(raw))
    weights = restored[-1].layers_
    assert all(isinstance(w, np.ndarray) and isinstance(b, np.ndarray) for w, b in weights)
    assert sorted(restored.classes_) == sorted(spec.classes)


def test_early_stopping_stops_before_the_epoch_limit() -> None:
    x, y = _toy()
    model = TorchMLPClassifier(hidden=(8,), max_epochs=500, patience=3, device="cpu").fit(x, y)
    report = model.fit_report_
    assert report["epochs"] < 500
    assert report["epochs"] - report["best_epoch"] == 3
    assert report["device"] == "cpu"
    assert not report["mixed_precision"]


def test_a_nan_loss_fails_the_fit_loudly() -> None:
    x, y = _toy()
    x[::7, 1] = np.nan
    with pytest.raises(FloatingPointError, match="loss is nan"):
        TorchMLPClassifier(max_epochs=3, device="cpu").fit(x, y)


def test_the_best_candidate_by_the_declared_metric_is_published(
    spec: ModelSpec, frame: pd.DataFrame
) -> None:
    model = train(frame, spec, TrainingConfig(candidates=ALL, device="cpu"))
    assert set(model.candidates) == set(ALL)
    best = max(model.candidates, key=lambda name: model.candidates[name].macro_f1 or 0.0)
    assert model.algorithm == best
    assert model.metrics == model.candidates[best]
    by_loss = train(frame, spec, TrainingConfig(candidates=ALL, selection_metric="log_loss"))
    lowest = min(by_loss.candidates, key=lambda n: by_loss.candidates[n].log_loss or np.inf)
    assert by_loss.algorithm == lowest


def test_metrics_include_roc_auc_calibration_and_a_confusion_matrix(
    spec: ModelSpec, frame: pd.DataFrame
) -> None:
    model = train(frame, spec, TrainingConfig())
    extra = model.metrics.model_dump()
    assert 0.5 < extra["roc_auc"] <= 1.0
    assert 0.0 <= extra["calibration_error"] < 0.2
    assert np.sum(model.confusion) == model.metrics.validation_rows
    assert list(model.holdout.columns) == [*spec.feature_names, spec.label]


def test_direction_of_each_selection_metric() -> None:
    worse = ModelMetrics(accuracy=0.7, macro_f1=0.6, log_loss=0.9, validation_rows=10)
    better = ModelMetrics(accuracy=0.8, macro_f1=0.7, log_loss=0.5, validation_rows=10)
    assert is_better("macro_f1", better, worse)
    assert is_better("log_loss", better, worse)
    assert not is_better("accuracy", worse, better)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA path not exercised: torch.cuda.is_available() is False (no GPU on this host)",
)
def test_the_mlp_trains_on_cuda_with_mixed_precision() -> None:
    x, y = _toy(4000)
    model = TorchMLPClassifier(hidden=(32,), max_epochs=20, device="cuda").fit(x, y)
    report = model.fit_report_
    assert report["device"].startswith("cuda:")
    assert report["mixed_precision"]
    assert (model.predict(x) == y).mean() > 0.9
    cpu = TorchMLPClassifier(hidden=(32,), max_epochs=20, device="cpu").fit(x, y)
    assert abs((model.predict(x) == y).mean() - (cpu.predict(x) == y).mean()) < 0.05
