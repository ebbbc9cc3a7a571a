"""A regression model's answers: a finite value per row, and an interval where the model
offers one (``predict_interval``). Pure: the service scores, this checks and shapes them
into the HTTP answer and the prediction events."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.gateway.core import ModelFailedError
from services.gateway.pool import LoadedModel, RoutingTable
from services.gateway.schemas import RowValueOut, ValuePredictResponse
from shared.events import PredictionLogged, Variant
from shared.spec import ModelSpec


@dataclass(frozen=True)
class RowValue:
    """One answered instance of a regression model."""

    value: float
    interval: tuple[float, float] | None = None


def check_values(values: np.ndarray, rows: int) -> None:
    """Raise ModelFailedError unless the model gave one finite value per instance.

    >>> check_values(np.array([1.5, -2.0]), 2)
    >>> check_values(np.array([np.inf]), 1)
    Traceback (most recent call last):
    ...
    services.gateway.core.ModelFailedError: the model answered non-finite values
    """
    if values.shape != (rows,):
        raise ModelFailedError(f"the model answered shape {values.shape}, expected {(rows,)}")
    if not np.isfinite(values).all():
        raise ModelFailedError("the model answered non-finite values")


def check_intervals(intervals: np.ndarray, rows: int) -> None:
    """Raise ModelFailedError unless the model gave one finite ``[low, high]`` per instance.

    >>> check_intervals(np.array([[1.0, 2.0]]), 1)
    >>> check_intervals(np.array([[2.0, 1.0]]), 1)
    Traceback (most recent call last):
    ...
    services.gateway.core.ModelFailedError: the model answered intervals whose low is above ...
    """
    if intervals.shape != (rows, 2):
        raise ModelFailedError(
            f"the model answered intervals of shape {intervals.shape}, expected {(rows, 2)}"
        )
    if not np.isfinite(intervals).all():
        raise ModelFailedError("the model answered non-finite intervals")
    if (intervals[:, 0] > intervals[:, 1]).any():
        raise ModelFailedError("the model answered intervals whose low is above their high")


def rows_from_values(values: np.ndarray, intervals: np.ndarray | None) -> list[RowValue]:
    """One answer per checked value, with its interval when the model gave them.

    >>> rows_from_values(np.array([2.5]), np.array([[2.0, 3.0]]))
    [RowValue(value=2.5, interval=(2.0, 3.0))]
    """
    if intervals is None:
        return [RowValue(float(v)) for v in values.tolist()]
    return [
        RowValue(float(v), (float(low), float(high)))
        for v, (low, high) in zip(values.tolist(), intervals.tolist(), strict=True)
    ]


def values_of(
    model: LoadedModel, rows: Sequence[Mapping[str, Any]], spec: ModelSpec
) -> list[RowValue]:
    """A regressor's checked values (and intervals, where it offers them) for checked rows;
    ModelFailedError when they are not one finite value (and interval) a row."""
    values = model.predict_values(rows, spec)
    check_values(values, len(rows))
    intervals = model.predict_intervals(rows, spec)
    if intervals is not None:
        check_intervals(intervals, len(rows))
    return rows_from_values(values, intervals)


def value_response(
    model: LoadedModel, variant: Variant, rows: list[RowValue], elapsed: float
) -> ValuePredictResponse:
    """The HTTP answer: each row's value (and interval), and which model gave them."""
    request_id = str(uuid.uuid4())
    ids = [request_id] if len(rows) == 1 else [f"{request_id}-{i}" for i in range(len(rows))]
    return ValuePredictResponse(
        request_id=request_id,
        model_name=model.name,
        model_version=model.version,
        variant=variant,
        predictions=[
            RowValueOut(request_id=row_id, value=row.value, interval=row.interval)
            for row_id, row in zip(ids, rows, strict=True)
        ],
        server_time_ms=elapsed * 1000,
    )


def value_events(
    response: ValuePredictResponse,
    rows: Sequence[dict[str, Any]],
    entity_id: str | None,
    routing: RoutingTable,
) -> list[PredictionLogged]:
    """One ``prediction-logged`` per row, carrying its ``predicted_value``."""
    return [
        PredictionLogged(
            producer="gateway",
            correlation_id=response.request_id,
            request_id=row.request_id,
            model_name=response.model_name,
            version=response.model_version,
            variant=response.variant,
            entity_id=entity_id,
            features=features,
            predicted_value=row.value,
            latency_ms=response.server_time_ms,
            experiment_id=routing.experiment_id,
            challenger_share=routing.challenger_share,
        )
        for row, features in zip(response.predictions, rows, strict=True)
    ]
