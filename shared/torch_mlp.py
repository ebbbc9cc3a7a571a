"""PyTorch MLPs (a classifier and a regressor) with a scikit-learn face, served with numpy.

It sits at the end of the trainer's sklearn ``Pipeline`` (after the scaling and
one-hot encoding), so the saved model carries its preprocessing and any service
that loads the pipeline with ``mlflow.sklearn`` serves exactly what was trained.
Training runs on CUDA when present (with mixed precision) or on CPU (seeded,
deterministic); prediction is a few numpy matrix products, so loading and
serving need neither torch nor a GPU. It lives in ``shared`` because the
trainer writes it and the gateway, registry and Bento service unpickle it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

Array = NDArray[Any]

#: Types a saved pipeline of Flywheel's may contain beyond sklearn's own (for skops).
TRUSTED_TYPES = [
    "shared.tabular.TabularEncoder",
    "shared.torch_mlp.TorchMLPClassifier",
    "shared.torch_mlp.TorchMLPRegressor",
]


@dataclass(frozen=True)
class FitReport:
    """How a fit went: where it ran, for how long, and why it stopped."""

    device: str
    mixed_precision: bool
    epochs: int
    best_epoch: int
    best_validation_loss: float
    seconds: float
    examples_per_s: float


@dataclass(frozen=True)
class Objective:
    """What the network learns: ``outputs`` logits (cross entropy) or one value (squared error)."""

    outputs: int
    regression: bool = False


def resolve_device(requested: str = "auto") -> str:
    """``"cuda"`` when asked for or available under ``"auto"``, else ``"cpu"``."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but torch.cuda.is_available() is False")
    return requested


class _TorchMLP(BaseEstimator):  # type: ignore[misc]
    """Hyperparameters, the torch fit and the numpy forward pass shared by both heads."""

    def __init__(
        self,
        hidden: tuple[int, ...] = (64, 32),
        max_epochs: int = 100,
        batch_size: int = 256,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
        patience: int = 8,
        validation_fraction: float = 0.1,
        seed: int = 42,
        device: str = "auto",
        mixed_precision: bool = True,
    ) -> None:
        self.hidden = hidden
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.device = device
        self.mixed_precision = mixed_precision

    def _fit_network(self, features: Array, targets: Array, objective: Objective) -> None:
        """Train the network on encoded ``features``; keep numpy layers and the fit report."""
        from shared._torch_training import fit_mlp

        self.n_features_in_ = features.shape[1]
        self.layers_, report = fit_mlp(self, features, targets, objective)
        # A plain dict, so safe serialisers (skops) need to trust no extra type.
        self.fit_report_ = asdict(report)

    def _forward(self, x: Any) -> Array:
        """The network's raw outputs (logits, or standardised values), rows × outputs."""
        hidden = _dense(x)
        for weight, bias in self.layers_[:-1]:
            hidden = np.maximum(hidden @ weight + bias, 0.0)
        weight, bias = self.layers_[-1]
        out: Array = hidden @ weight + bias
        return out


class TorchMLPClassifier(ClassifierMixin, _TorchMLP):  # type: ignore[misc]
    """Fully connected ReLU network with softmax output and early stopping on validation loss.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(400, 3)).astype("float32")
    >>> y = np.where(x[:, 0] + x[:, 1] > 0, "up", "down")
    >>> model = TorchMLPClassifier(hidden=(16,), max_epochs=30, device="cpu").fit(x, y)
    >>> bool((model.predict(x) == y).mean() > 0.9), [str(c) for c in model.classes_]
    (True, ['down', 'up'])
    """

    def fit(self, x: Any, y: Any) -> TorchMLPClassifier:
        """Train on ``x`` (rows × features) and labels ``y``; raises FloatingPointError on NaN."""
        self.classes_, targets = np.unique(np.asarray(y).astype(str), return_inverse=True)
        self._fit_network(_dense(x), targets, Objective(outputs=len(self.classes_)))
        return self

    def predict_proba(self, x: Any) -> Array:
        """Class probabilities, columns in the order of ``classes_``."""
        logits = self._forward(x)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probabilities: Array = exp / exp.sum(axis=1, keepdims=True)
        return probabilities

    def predict(self, x: Any) -> Array:
        """The most probable class of each row."""
        labels: Array = self.classes_[np.argmax(self.predict_proba(x), axis=1)]
        return labels


class TorchMLPRegressor(RegressorMixin, _TorchMLP):  # type: ignore[misc]
    """The same network with one linear output, trained on squared error.

    The target is standardised for training (so learning rate and early stopping
    behave alike whatever its scale) and mapped back when predicting.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(600, 2)).astype("float32")
    >>> y = 50.0 + 10.0 * x[:, 0] + 5.0 * np.abs(x[:, 1])
    >>> model = TorchMLPRegressor(hidden=(32,), max_epochs=80, device="cpu").fit(x, y)
    >>> bool(model.score(x, y) > 0.9), model.predict(x[:3]).shape
    (True, (3,))
    """

    def fit(self, x: Any, y: Any) -> TorchMLPRegressor:
        """Train on ``x`` (rows × features) and numbers ``y``; raises FloatingPointError on NaN."""
        values = np.asarray(y, dtype=np.float64)
        self.target_mean_ = float(values.mean())
        scale = float(values.std())
        self.target_scale_ = scale if scale > 0 else 1.0
        standardised = ((values - self.target_mean_) / self.target_scale_).astype(np.float32)
        self._fit_network(_dense(x), standardised, Objective(outputs=1, regression=True))
        return self

    def predict(self, x: Any) -> Array:
        """The predicted value of each row, in the target's own units."""
        values: Array = self._forward(x)[:, 0].astype(np.float64)
        return values * self.target_scale_ + self.target_mean_


def _dense(x: Any) -> Array:
    """A float32 C-contiguous array from a dense or sparse matrix (or a frame)."""
    if hasattr(x, "toarray"):
        x = x.toarray()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def examples_per_second(rows: int, epochs: int, seconds: float) -> float:
    """Training throughput: rows seen per second over all epochs."""
    return rows * epochs / seconds if seconds > 0 else float("inf")


def now() -> float:
    """A monotonic clock reading (seconds)."""
    return time.perf_counter()
