"""What an import computes from a holdout: checks, metrics, reference sample, predictions."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, mean_squared_error

from services.registry.importing import (
    HoldoutFile,
    checked_holdout,
    classification_metrics,
    data_version_of,
    evaluate,
    missing_holdout,
    prediction_frame,
    read_holdout,
    reference_sample,
    regression_metrics,
)
from shared.errors import InvalidInputError
from shared.spec import ModelSpec

CLASSIFIER = ModelSpec.model_validate(
    {
        "name": "fraud",
        "label": "is_fraud",
        "classes": ["legit", "fraud"],
        "features": [
            {"name": "amount", "type": "numeric"},
            {"name": "channel", "type": "categorical", "categories": ["web", "pos"]},
        ],
    }
)
REGRESSOR = ModelSpec.model_validate(
    {
        "name": "price",
        "label": "price",
        "task": "regression",
        "features": [{"name": "area", "type": "numeric"}, {"name": "rooms", "type": "numeric"}],
    }
)


def _fraud_rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.exponential(100, n)
    channel = rng.choice(["web", "pos"], n)
    fraud = (amount + rng.normal(0, 40, n)) > 150
    return pd.DataFrame(
        {"amount": amount, "channel": channel, "is_fraud": np.where(fraud, "fraud", "legit")}
    )


class ProbaScorer:
    """A scorer answering with a fitted sklearn classifier's probabilities, in spec order."""

    flavor = "sklearn"

    def __init__(self, frame: pd.DataFrame) -> None:
        self.model = LogisticRegression().fit(frame[["amount"]], frame["is_fraud"])
        self.calls: list[int] = []

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        self.calls.append(len(frame))
        raw = self.model.predict_proba(frame[["amount"]])
        order = [list(self.model.classes_).index(c) for c in CLASSIFIER.classes]
        return np.asarray(raw[:, order])

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        raise AssertionError("a classifier is not asked for values")


class ValueScorer:
    flavor = "pyfunc"

    def __init__(self, frame: pd.DataFrame) -> None:
        self.model = LinearRegression().fit(frame[["area", "rooms"]], frame["price"])

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        raise AssertionError("a regressor is not asked for probabilities")

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.predict(frame[["area", "rooms"]]))


def test_classification_metrics_are_sklearn_s_on_the_argmax_labels() -> None:
    frame = _fraud_rows(300)
    scorer = ProbaScorer(frame)
    p = scorer.predict_proba(frame)
    truth = frame["is_fraud"].to_numpy()

    metrics = classification_metrics(truth, p, CLASSIFIER.classes)

    predicted = np.asarray(CLASSIFIER.classes)[p.argmax(axis=1)]
    assert metrics.accuracy == pytest.approx(accuracy_score(truth, predicted))
    assert metrics.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"))
    # Columns are in the spec's order (legit, fraud), not sorted: each row's own class.
    own = p[np.arange(len(p)), [CLASSIFIER.classes.index(t) for t in truth]]
    assert metrics.log_loss == pytest.approx(-np.mean(np.log(own)))
    assert metrics.log_loss == pytest.approx(log_loss(truth, p[:, ::-1], labels=["fraud", "legit"]))
    assert metrics.validation_rows == 300
    assert metrics.accuracy is not None
    assert 0.6 < metrics.accuracy < 1.0  # a real, imperfect model: the numbers mean something


def test_one_hot_answers_get_a_finite_log_loss() -> None:
    p = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    metrics = classification_metrics(np.array(["legit", "legit", "legit"]), p, ("legit", "fraud"))
    assert metrics.accuracy == pytest.approx(2 / 3)
    assert metrics.log_loss is not None
    assert np.isfinite(metrics.log_loss)
    assert metrics.log_loss > 5  # one confident miss costs -log(1e-15)/3


def test_regression_metrics() -> None:
    truth, predicted = np.array([3.0, 5.0, 7.0, 9.0]), np.array([2.0, 5.0, 8.0, 11.0])
    metrics = regression_metrics(truth, predicted)
    assert metrics.rmse == pytest.approx(np.sqrt(mean_squared_error(truth, predicted)))
    assert metrics.mae == pytest.approx(1.0)
    assert metrics.r2 == pytest.approx(1 - 6 / 20)
    assert metrics.is_regression
    assert metrics.accuracy is None


def test_evaluate_logs_a_reference_sample_and_its_predictions() -> None:
    frame = _fraud_rows(300)
    scorer = ProbaScorer(frame)
    evaluation = evaluate(scorer, CLASSIFIER, checked_holdout(frame, CLASSIFIER))

    assert list(evaluation.holdout.columns) == ["amount", "channel", "is_fraud"]
    assert list(evaluation.reference.columns) == ["amount", "channel"]
    assert len(evaluation.reference) == len(evaluation.predictions) == 300
    assert set(evaluation.predictions["prediction"]) == {"legit", "fraud"}
    expected = scorer.model.predict(evaluation.reference[["amount"]])
    assert evaluation.predictions["prediction"].tolist() == list(expected)


def test_evaluate_a_regressor() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"area": rng.uniform(30, 200, 200), "rooms": rng.integers(1, 6, 200)})
    frame["price"] = 3 * frame["area"] + 10 * frame["rooms"] + rng.normal(0, 5, 200)
    evaluation = evaluate(ValueScorer(frame), REGRESSOR, checked_holdout(frame, REGRESSOR))

    assert evaluation.metrics.rmse is not None
    assert 3 < evaluation.metrics.rmse < 7
    assert evaluation.metrics.r2 is not None
    assert evaluation.metrics.r2 > 0.99
    assert evaluation.predictions["prediction"].dtype == float


def test_reference_is_a_seeded_sample_when_the_holdout_is_large() -> None:
    features = pd.DataFrame({"x": np.arange(50)})
    small = reference_sample(features, rows=100)
    sampled = reference_sample(features, rows=10)
    assert small["x"].tolist() == list(range(50))
    assert len(sampled) == 10
    assert sampled.equals(reference_sample(features, rows=10))
    assert sampled["x"].tolist() != list(range(10))


def test_prediction_frame_is_labels_or_values() -> None:
    labels = prediction_frame(np.array([[0.2, 0.8], [0.9, 0.1]]), CLASSIFIER)
    values = prediction_frame(np.array([1.5, 2.0]), REGRESSOR)
    assert labels["prediction"].tolist() == ["fraud", "legit"]
    assert values["prediction"].tolist() == [1.5, 2.0]


def test_a_holdout_missing_columns_is_refused_naming_them() -> None:
    frame = _fraud_rows(10).drop(columns=["channel", "is_fraud"])
    with pytest.raises(InvalidInputError, match=r"missing columns \['channel', 'is_fraud'\]"):
        checked_holdout(frame, CLASSIFIER)


def test_bad_values_are_refused_naming_the_column() -> None:
    unknown_class = _fraud_rows(10).assign(is_fraud="maybe")
    with pytest.raises(InvalidInputError, match=r"is_fraud: unknown classes \['maybe'\]"):
        checked_holdout(unknown_class, CLASSIFIER)
    text_amount = _fraud_rows(10).assign(amount="lots")
    with pytest.raises(InvalidInputError, match="amount: expected numbers"):
        checked_holdout(text_amount, CLASSIFIER)
    regression = pd.DataFrame({"area": [1.0, 2.0], "rooms": [1, 2], "price": [3.0, "n/a"]})
    with pytest.raises(
        InvalidInputError, match="price: a regression label must be a finite number; row 1"
    ):
        checked_holdout(regression, REGRESSOR)


def test_extra_columns_are_left_out_and_the_label_kept() -> None:
    frame = _fraud_rows(10).assign(customer_id=range(10))
    assert list(checked_holdout(frame, CLASSIFIER).columns) == ["amount", "channel", "is_fraud"]


def test_read_holdout_parquet_and_csv_and_a_broken_file() -> None:
    frame = _fraud_rows(5)
    parquet, csv = io.BytesIO(), io.StringIO()
    frame.to_parquet(parquet, index=False)
    frame.to_csv(csv, index=False)
    assert read_holdout(HoldoutFile(parquet.getvalue(), "parquet")).equals(frame)
    assert read_holdout(HoldoutFile(csv.getvalue().encode(), "csv"))["channel"].tolist() == list(
        frame["channel"]
    )
    with pytest.raises(InvalidInputError, match="not a readable parquet file"):
        read_holdout(HoldoutFile(b"amount,channel\n1,web\n", "parquet"))


def test_the_missing_holdout_message_names_every_column_and_the_option() -> None:
    message = missing_holdout(CLASSIFIER, "no holdout was given")
    assert "columns amount, channel, is_fraud" in message
    assert message.endswith("pass --holdout FILE")


def test_data_version_follows_the_rows() -> None:
    frame = _fraud_rows(20)
    assert data_version_of(frame) == data_version_of(frame.copy())
    assert data_version_of(frame) != data_version_of(frame.iloc[:19])
