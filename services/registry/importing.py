"""Bring your own model: score a model trained elsewhere on a holdout, log what Flywheel's
own training runs log, and hand it to the gates with ``model-trained`` (trigger "import").

The first half is pure (a holdout and a model's outputs in, metrics, reference sample
and predictions out); ``ModelImporter`` is the thin shell that loads the model, reads
the holdout, logs the run through ``ImportStore`` and publishes the event.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)

from shared.catalog import ModelCatalog
from shared.datasets import validate_frame
from shared.errors import InvalidInputError
from shared.events import ModelMetrics, ModelTrained
from shared.messaging import EventPublisher
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

#: Rows of the holdout kept as the reference sample (the trainer keeps up to as many).
REFERENCE_ROWS = 10_000
#: Seed of that sample, so importing the same holdout twice logs the same reference.
REFERENCE_SEED = 0
#: Where the import run logs the copy of the model: the registered version is this run's.
MODEL_ARTIFACT = "model"

HoldoutFormat = Literal["parquet", "csv"]


class HoldoutFile(NamedTuple):
    """A holdout as sent: the file's bytes and how to read them."""

    content: bytes
    format: HoldoutFormat


class ImportScorer(Protocol):
    """The loaded model (``shared.scoring.Scorer``): answers in its spec's terms."""

    flavor: str

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Classification: probabilities in ``spec.classes`` order."""

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        """Regression: one value a row."""


#: Loads a model for a spec (``shared.scoring.load_scorer``).
ScorerLoader = Callable[[str, ModelSpec], ImportScorer]


class Evaluation(NamedTuple):
    """What an import computes from the holdout: what a trained run would have logged."""

    metrics: ModelMetrics
    holdout: pd.DataFrame
    """The holdout's spec columns (features and label), as the gates read them."""
    reference: pd.DataFrame
    """A sample of the holdout's features: what the monitor tests drift against."""
    predictions: pd.DataFrame
    """One column ``prediction``: the model's outputs on the reference rows."""


@dataclass(frozen=True)
class ImportRecord:
    """Everything the import run logs."""

    model_name: str
    source_uri: str
    flavor: str
    evaluation: Evaluation
    holdout_source: str
    """Where the holdout came from: ``upload`` or ``source run <id>``."""
    requested_by: str
    data_version: str


# --- pure: the holdout ------------------------------------------------------------------------


def missing_holdout(spec: ModelSpec, why: str) -> str:
    """The refusal when no holdout was given and the source run logged none.

    >>> from shared.spec import load_spec
    >>> missing_holdout(load_spec(), "runs:/r1/model's run logged none").split(";")[0]
    "runs:/r1/model's run logged none"
    """
    columns = ", ".join([*spec.feature_names, spec.label])
    return (
        f"{why}; a holdout with columns {columns} is needed to compute the reference and "
        "the gates' metrics; pass --holdout FILE"
    )


def read_holdout(holdout: HoldoutFile) -> pd.DataFrame:
    """The uploaded file as a frame (InvalidInputError naming the format when unreadable)."""
    buffer = io.BytesIO(holdout.content)
    try:
        return pd.read_csv(buffer) if holdout.format == "csv" else pd.read_parquet(buffer)
    except Exception as error:  # pandas and pyarrow raise many kinds for a bad file
        raise InvalidInputError(
            f"holdout: not a readable {holdout.format} file: {error}"
        ) from error


def checked_holdout(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The spec's features and label, checked as a training batch is (InvalidInputError
    naming missing columns and bad values)."""
    try:
        checked = validate_frame(frame, spec, labelled=True)
    except InvalidInputError as error:
        raise InvalidInputError(f"holdout: {error}") from error
    if spec.is_regression:  # a number in a text column passed the check; metrics want floats
        checked[spec.label] = pd.to_numeric(checked[spec.label]).astype(float)
    return checked


def data_version_of(holdout: pd.DataFrame) -> str:
    """A hash of the holdout's rows: the only data of an imported model Flywheel has seen.

    >>> frame = pd.DataFrame({"a": [1, 2]})
    >>> data_version_of(frame) == data_version_of(frame.copy()), len(data_version_of(frame))
    (True, 64)
    """
    rows = pd.util.hash_pandas_object(holdout, index=False).to_numpy()
    return hashlib.sha256(rows.tobytes()).hexdigest()


# --- pure: metrics, reference and predictions -------------------------------------------------


def classification_metrics(
    truth: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]
) -> ModelMetrics:
    """Accuracy, macro F1 and log loss of ``probabilities`` (columns in ``classes`` order).

    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> m = classification_metrics(np.array(["a", "b", "b"]), p, ("a", "b"))
    >>> round(m.accuracy, 3), m.validation_rows
    (0.667, 3)
    """
    labels = np.asarray(classes)
    predicted = labels[np.argmax(probabilities, axis=1)]
    truth = np.asarray(truth).astype(str)
    # log_loss reads the columns as the labels sorted, whatever order ``labels`` is given in.
    order = np.argsort(labels)
    return ModelMetrics(
        accuracy=float(accuracy_score(truth, predicted)),
        macro_f1=float(f1_score(truth, predicted, average="macro", zero_division=0)),
        log_loss=float(log_loss(truth, _clipped(probabilities)[:, order], labels=labels[order])),
        validation_rows=len(truth),
    )


def _clipped(probabilities: np.ndarray) -> np.ndarray:
    """Rows renormalised: a pyfunc's one-hot answers or a model's rounding are not refused."""
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-15, 1.0)
    return np.asarray(p / p.sum(axis=1, keepdims=True))


def regression_metrics(truth: np.ndarray, predicted: np.ndarray) -> ModelMetrics:
    """RMSE, MAE and R² of ``predicted`` against ``truth``.

    >>> m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    >>> round(m.rmse, 4), round(m.mae, 4), m.r2
    (1.1547, 0.6667, -1.0)
    """
    return ModelMetrics(
        rmse=float(np.sqrt(mean_squared_error(truth, predicted))),
        mae=float(mean_absolute_error(truth, predicted)),
        r2=float(r2_score(truth, predicted)),
        validation_rows=len(truth),
    )


def reference_sample(
    features: pd.DataFrame, rows: int = REFERENCE_ROWS, seed: int = REFERENCE_SEED
) -> pd.DataFrame:
    """Up to ``rows`` of ``features``, drawn with ``seed`` (all of them when fewer)."""
    if len(features) <= rows:
        return features.reset_index(drop=True)
    return features.sample(n=rows, random_state=seed).reset_index(drop=True)


def prediction_frame(outputs: np.ndarray, spec: ModelSpec) -> pd.DataFrame:
    """``reference/predictions.parquet``: the class label, or the value, of each row.

    >>> from shared.spec import load_spec
    >>> spec = load_spec()
    >>> prediction_frame(np.array([[0.1, 0.7, 0.2]]), spec)["prediction"].tolist()
    ['steady']
    """
    if spec.is_regression:
        return pd.DataFrame({"prediction": np.asarray(outputs, dtype=float)})
    labels = np.asarray(spec.classes)[np.argmax(outputs, axis=1)]
    return pd.DataFrame({"prediction": labels.astype(str)})


def evaluate(scorer: ImportScorer, spec: ModelSpec, holdout: pd.DataFrame) -> Evaluation:
    """Score the checked ``holdout``: metrics on every row, predictions on the reference's."""
    features = holdout[list(spec.feature_names)]
    reference = reference_sample(features)
    if spec.is_regression:
        metrics = regression_metrics(
            holdout[spec.label].to_numpy(), scorer.predict_values(features)
        )
        outputs = scorer.predict_values(reference)
    else:
        probabilities = scorer.predict_proba(features)
        metrics = classification_metrics(
            holdout[spec.label].to_numpy(), probabilities, spec.classes
        )
        outputs = scorer.predict_proba(reference)
    return Evaluation(metrics, holdout, reference, prediction_frame(outputs, spec))


def import_tags(record: ImportRecord) -> dict[str, str]:
    """The import run's tags: where the model came from, its flavour, who asked."""
    return {
        "flywheel.trigger": "import",
        "flywheel.source_model_uri": record.source_uri,
        "flywheel.flavor": record.flavor,
        "flywheel.algorithm": algorithm_of(record.flavor),
        "flywheel.holdout_source": record.holdout_source,
        "flywheel.data_version": record.data_version,
        "flywheel.requested_by": record.requested_by,
    }


def algorithm_of(flavor: str) -> str:
    """The ``algorithm`` an imported version is known by.

    >>> algorithm_of("lightgbm")
    'imported:lightgbm'
    """
    return f"imported:{flavor}"


# --- the shell --------------------------------------------------------------------------------


class ImportStore(Protocol):
    """Where imports read source runs and log their own run (MLflow; blocking calls)."""

    def source_holdout(self, model_uri: str) -> pd.DataFrame | None:
        """The holdout Flywheel logged with the model's own run, or None."""

    def log_import(self, record: ImportRecord) -> str:
        """Log the import run (model copy, reference, holdout, predictions, metrics, tags);
        return its run id."""


class ImportAccepted(NamedTuple):
    """An import logged and handed to the gates."""

    event: ModelTrained
    flavor: str
    source_uri: str
    holdout_source: str


@dataclass(frozen=True)
class ModelImporter:
    """Imports models trained elsewhere (the ``POST /v1/models/{name}/imports`` route)."""

    catalog: ModelCatalog
    store: ImportStore
    load_scorer: ScorerLoader
    publisher: EventPublisher

    async def import_model(
        self, name: str, model_uri: str, holdout: HoldoutFile | None, requested_by: str
    ) -> ImportAccepted:
        """Score, log and publish ``model-trained`` for ``model_uri`` as a candidate of ``name``.

        Raises UnknownModelError (404) for a model not registered, NotFoundError when
        nothing is at ``model_uri``, InvalidInputError (422) when the model or the
        holdout does not fit the spec, or no holdout can be had.
        """
        spec = await self.catalog.spec(name)
        record = await asyncio.to_thread(
            self._evaluated, name, spec, model_uri, holdout, requested_by
        )
        run_id = await asyncio.to_thread(self.store.log_import, record)
        event = ModelTrained(
            producer="registry",
            model_name=name,
            run_id=run_id,
            model_uri=f"runs:/{run_id}/{MODEL_ARTIFACT}",
            algorithm=algorithm_of(record.flavor),
            metrics=record.evaluation.metrics,
            data_version=record.data_version,
            trigger="import",
        )
        await self.publisher.publish(event)
        log.info(
            "model imported",
            extra={"model": name, "run_id": run_id, "source": model_uri, "flavor": record.flavor},
        )
        return ImportAccepted(event, record.flavor, model_uri, record.holdout_source)

    def _evaluated(
        self,
        name: str,
        spec: ModelSpec,
        model_uri: str,
        holdout: HoldoutFile | None,
        requested_by: str,
    ) -> ImportRecord:
        scorer = self.load_scorer(model_uri, spec)
        frame, source = self._holdout(spec, model_uri, holdout)
        checked = checked_holdout(frame, spec)
        return ImportRecord(
            model_name=name,
            source_uri=model_uri,
            flavor=scorer.flavor,
            evaluation=evaluate(scorer, spec, checked),
            holdout_source=source,
            requested_by=requested_by,
            data_version=data_version_of(checked),
        )

    def _holdout(
        self, spec: ModelSpec, model_uri: str, holdout: HoldoutFile | None
    ) -> tuple[pd.DataFrame, str]:
        if holdout is not None:
            return read_holdout(holdout), "upload"
        logged = self.store.source_holdout(model_uri)
        if logged is None:
            why = f"no holdout was given and the run of {model_uri} logged none"
            raise InvalidInputError(missing_holdout(spec, why))
        return logged, f"source run of {model_uri}"
