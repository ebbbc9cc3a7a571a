"""The gateway's pure core: sticky routing, feature validation against the spec, scoring rows."""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from shared.errors import FlywheelError, InvalidInputError
from shared.events import Variant
from shared.spec import FeatureSpec, ModelSpec
from shared.tabular import TabularEncoder

#: Where a model stands in one gateway (``GET /v1/models``).
ModelState = Literal["serving", "loading", "no_champion", "failed", "unloaded"]


class FeatureValidationError(InvalidInputError):
    """Instances do not fit the model spec; ``problems`` name each bad field."""

    def __init__(self, problems: Sequence[str], expected: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)
        self.expected = tuple(expected)


class BatchTooLargeError(InvalidInputError):
    """A request carries more instances than the gateway accepts at once."""

    status_code = 413


class WrongModelError(InvalidInputError):
    """Feedback sent to one model's route for a prediction another model answered."""

    status_code = 409


class ModelUnavailableError(FlywheelError):
    """No model is loaded for the alias a request needs; it may load later."""

    retryable = True


class ModelFailedError(FlywheelError):
    """The routed model raised, or answered probabilities (or values) that are not finite."""

    retryable = True
    status_code = 500


def check_probabilities(probabilities: np.ndarray, rows: int, classes: int) -> None:
    """Raise ModelFailedError unless the model gave one finite row per instance.

    >>> check_probabilities(np.array([[0.2, 0.8]]), 1, 2)
    >>> check_probabilities(np.array([[np.nan, 0.5]]), 1, 2)
    Traceback (most recent call last):
    ...
    services.gateway.core.ModelFailedError: the model answered non-finite probabilities
    """
    if probabilities.shape != (rows, classes):
        raise ModelFailedError(
            f"the model answered shape {probabilities.shape}, expected {(rows, classes)}"
        )
    if not np.isfinite(probabilities).all():
        raise ModelFailedError("the model answered non-finite probabilities")


def bucket_of(experiment_id: str, entity_id: str) -> float:
    """Where ``entity_id`` falls in [0, 1) for this experiment: stable and uniform.

    >>> bucket_of("exp-1", "alice") == bucket_of("exp-1", "alice")
    True
    >>> 0.0 <= bucket_of("exp-1", "bob") < 1.0
    True
    """
    digest = hashlib.sha256(f"{experiment_id}:{entity_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_variant(
    share: float, experiment_id: str | None, entity_id: str | None, rng: random.Random
) -> Variant:
    """Champion or challenger: by the entity's bucket when known, else at random by the split.

    An entity goes to the challenger iff its bucket is below ``share``, so raising the
    share keeps everyone already on the challenger there.
    """
    if share <= 0.0 or experiment_id is None:
        return "champion"
    draw = bucket_of(experiment_id, entity_id) if entity_id is not None else rng.random()
    return "challenger" if draw < share else "champion"


def validate_instances(
    instances: Sequence[Mapping[str, Any]], spec: ModelSpec, max_batch: int
) -> pd.DataFrame:
    """The instances as a frame in the spec's column order, or every problem at once."""
    check_instances(instances, spec, max_batch)
    return frame_of(instances, spec)


def check_instances(
    instances: Sequence[Mapping[str, Any]], spec: ModelSpec, max_batch: int
) -> None:
    """Raise with every problem of the instances at once (none: they fit the spec)."""
    if len(instances) > max_batch:
        raise BatchTooLargeError(
            f"{len(instances)} instances in one request; at most {max_batch} are accepted"
        )
    if not instances:
        raise FeatureValidationError(["instances: at least one is required"], spec.feature_names)
    problems = [p for i, row in enumerate(instances) for p in _row_problems(i, row, spec)]
    if problems:
        raise FeatureValidationError(problems, spec.feature_names)


def frame_of(instances: Sequence[Mapping[str, Any]], spec: ModelSpec) -> pd.DataFrame:
    """Checked instances as a frame in the spec's column order, numbers as float64."""
    # Typed arrays up front: casting each numeric column after construction cost ~0.7 ms a request.
    numeric = set(spec.numeric_features)
    columns = {
        name: np.array([row[name] for row in instances], dtype=float if name in numeric else object)
        for name in spec.feature_names
    }
    return pd.DataFrame(columns, columns=_column_index(spec.feature_names))


def example_row(spec: ModelSpec) -> dict[str, Any]:
    """A row that fits the spec (zeros, first categories): for warming a model up.

    >>> from shared.spec import load_spec
    >>> row = example_row(load_spec())
    >>> row["age"], row["plan"]
    (0.0, 'basic')
    """
    return {f.name: f.categories[0] if f.categories else 0.0 for f in spec.features}


RowScorer = Callable[[Sequence[Mapping[str, Any]]], np.ndarray]


def is_flywheel_pipeline(model: Any) -> bool:
    """Whether ``model`` is Flywheel's own pipeline: a ``TabularEncoder``, then an estimator.

    >>> from sklearn.linear_model import LinearRegression
    >>> from sklearn.pipeline import Pipeline
    >>> is_flywheel_pipeline(Pipeline([("features", TabularEncoder()), ("m", LinearRegression())]))
    True
    >>> is_flywheel_pipeline(LinearRegression())
    False
    """
    steps = getattr(model, "steps", None)
    return isinstance(steps, list) and len(steps) == 2 and isinstance(steps[0][1], TabularEncoder)


def row_scorer(model: Any, method: str = "predict_proba") -> RowScorer | None:
    """``method`` (probabilities, or ``predict``'s values) straight from checked rows, for
    Flywheel's own pipelines.

    A pipeline of a ``TabularEncoder`` and an estimator encodes dicts directly: the
    same numbers without a DataFrame, whose construction was a third of a one-row
    request. Any other model, or an estimator without ``method``, gets None (it is
    given a frame).
    """
    if not is_flywheel_pipeline(model):
        return None
    (_, encoder), (_, estimator) = model.steps
    if not hasattr(estimator, method):
        return None
    answer = getattr(estimator, method)

    def score(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.asarray(answer(encoder.transform_rows(rows)))

    return score


@functools.cache
def _column_index(names: tuple[str, ...]) -> pd.Index:
    """One column Index for every request: building it (and its look-up table) per request
    was a fifth of a one-row request's time."""
    return pd.Index(names, dtype=object)


def _row_problems(index: int, row: Mapping[str, Any], spec: ModelSpec) -> list[str]:
    where = f"instances[{index}]"
    unknown = sorted(set(row) - set(spec.feature_names))
    problems = (
        [f"{where}: unknown features {unknown}; expected {list(spec.feature_names)}"]
        if unknown
        else []
    )
    for feature in spec.features:
        problem = _value_problem(feature, row[feature.name]) if feature.name in row else "missing"
        if problem:
            problems.append(f"{where}.{feature.name}: {problem}")
    return problems


def _value_problem(feature: FeatureSpec, value: Any) -> str | None:
    if feature.type == "categorical":
        if isinstance(value, str) and value in feature.categories:
            return None
        return f"expected one of {list(feature.categories)}, got {_shown(value)}"
    # bool is an int in Python, but true/false is no customer age.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number, got {_shown(value)}"
    return _number_problem(feature, value)


def _number_problem(feature: FeatureSpec, value: int | float) -> str | None:
    """Why a number cannot be served: not finite as a float, or outside the spec's bounds.

    Both are the client's error. Left to the model, 1e308 overflowed its scaling into
    NaN probabilities: a 500 charged to whichever variant happened to be routed.

    >>> age = FeatureSpec(name="age", type="numeric", min=0, max=150)
    >>> _number_problem(age, 10**400)
    'expected a finite number, got 10000000000000000000…(401 digits)'
    >>> _number_problem(age, 1e308)
    'expected a number in [0, 150], got 1e+308'
    >>> _number_problem(age, 41) is None
    True
    """
    try:
        number = float(value)  # a JSON integer of 400 digits is a Python int no float holds
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        return f"expected a finite number, got {_shown(value)}"
    if feature.out_of_bounds(number):
        return f"expected a number {_bounds_text(feature)}, got {_shown(value)}"
    return None


def _bounds_text(feature: FeatureSpec) -> str:
    if feature.min is not None and feature.max is not None:
        return f"in [{feature.min:g}, {feature.max:g}]"
    return f"≥ {feature.min:g}" if feature.min is not None else f"≤ {feature.max:g}"


def _shown(value: Any, limit: int = 20) -> str:
    """``value`` as the client sent it, cut short: an error must not echo a megabyte back."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        digits = len(str(abs(value)))
        return f"{str(value)[:limit]}…({digits} digits)"
    shown = repr(value)
    return shown if len(shown) <= 2 * limit else f"{shown[: 2 * limit]}…"


@dataclass(frozen=True)
class RowPrediction:
    """One answered instance."""

    predicted_class: str
    class_id: int
    confidence: float
    probabilities: dict[str, float]


def rows_from_probabilities(
    classes: Sequence[str], probabilities: np.ndarray, spec_classes: Sequence[str] = ()
) -> list[RowPrediction]:
    """One prediction per row of ``probabilities`` (columns in the order of ``classes``).

    ``class_id`` is the class's position in ``spec_classes`` (the spec's order, the same
    for every version; a model orders its classes its own way, scikit-learn sorted),
    or in ``classes`` for a class the spec does not list.

    >>> probabilities = np.array([[0.1, 0.7, 0.2]])  # columns sorted: at_risk, high_value, steady
    >>> row, = rows_from_probabilities(("at_risk", "high_value", "steady"), probabilities,
    ...     ("at_risk", "steady", "high_value"))
    >>> row.predicted_class, row.class_id
    ('high_value', 2)
    """
    ids = {str(c): i for i, c in enumerate(spec_classes)}
    best = probabilities.argmax(axis=1)
    return [
        RowPrediction(
            predicted_class=str(classes[int(k)]),
            class_id=ids.get(str(classes[int(k)]), int(k)),
            confidence=min(1.0, float(row[k])),
            probabilities={str(c): float(p) for c, p in zip(classes, row, strict=True)},
        )
        for k, row in zip(best, probabilities, strict=True)
    ]


def row_from_store(stored: Mapping[str, str], spec: ModelSpec) -> dict[str, Any]:
    """A feature row from the store's strings: numbers parsed, the rest left for validation.

    >>> from shared.spec import load_spec
    >>> row = row_from_store({"age": "41", "plan": "plus"}, load_spec())
    >>> row["age"], row["plan"]
    (41.0, 'plus')
    """
    numeric = set(spec.numeric_features)
    row: dict[str, Any] = {}
    for name, value in stored.items():
        try:
            row[name] = float(value) if name in numeric else value
        except ValueError:
            row[name] = value  # validation names the bad field
    return row
